/**
 * `unthrottled`: what LXD does today with one shared volume and no governor. All overlays share
 * Ω with no partition and no throttle; a write that finds Ω full fails (QEMU's default
 * werror=enospc pauses the guest), which counts as a failed migration.
 */
import type { Decision, Policy, WorldState } from './types';

export const unthrottledPolicy: Policy = {
  name: 'unthrottled',
  mirrorOnly: false,
  decide(world: WorldState): Decision {
    const n = Math.max(1, world.migrations.length);
    let used = 0;
    for (const m of world.migrations) used += m.overlayBytes;
    const free = Math.max(0, world.omegaBytes - used);
    return {
      policy: 'unthrottled',
      atSec: world.nowSec,
      migrations: world.migrations.map((m) => ({
        id: m.id,
        partitionBytes: null,
        quotaBytes: m.overlayBytes + free,
        throttleBytesPerSec: null,
        linkShareBytesPerSec: world.linkBytesPerSec / n,
        meanPriority: 1,
        failed: false,
      })),
      reason: 'one shared pool, no throttle: a migration fails when Ω is full',
    };
  },
};
