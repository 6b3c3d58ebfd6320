/**
 * `mirror-only`: no overlay at all. The disk is copied by a write-blocking mirror from the
 * start (sync: full), so Ω is never used and nothing can overflow, but every guest write must
 * cross the link synchronously: guest writes are capped by the migration's link share for the
 * whole migration. (Not what LXD does; the baseline the overlay design is meant to beat.)
 */
import type { Decision, Policy, WorldState } from './types';

export const mirrorOnlyPolicy: Policy = {
  name: 'mirror-only',
  mirrorOnly: true,
  decide(world: WorldState): Decision {
    const n = Math.max(1, world.migrations.length);
    return {
      policy: 'mirror-only',
      atSec: world.nowSec,
      migrations: world.migrations.map((m) => ({
        id: m.id,
        partitionBytes: 0,
        quotaBytes: 0,
        throttleBytesPerSec: null,
        linkShareBytesPerSec: world.linkBytesPerSec / n,
        meanPriority: 1,
        failed: false,
      })),
      reason: 'no overlay: write-blocking mirror from the start, guest writes capped by the link share',
    };
  },
};
