/**
 * `static`: today's `size.state` done by hand. Every migration gets a fixed bin of
 * `staticBinBytes` (default Ω / number of VMs in the scenario) and no throttle; a migration
 * fails when its bin is full (or, if the bins over-commit Ω, when Ω is).
 */
import type { Decision, Policy, WorldState } from './types';

/** @param staticBinBytes bytes per migration (> 0, finite). */
export function staticPolicy(staticBinBytes: number): Policy {
  if (!(staticBinBytes > 0) || !Number.isFinite(staticBinBytes)) {
    throw new RangeError(`staticBinBytes: must be a finite number > 0 (got ${String(staticBinBytes)})`);
  }
  return {
    name: 'static',
    mirrorOnly: false,
    decide(world: WorldState): Decision {
      const n = Math.max(1, world.migrations.length);
      return {
        policy: 'static',
        atSec: world.nowSec,
        migrations: world.migrations.map((m) => ({
          id: m.id,
          partitionBytes: staticBinBytes,
          quotaBytes: Math.max(m.overlayBytes, staticBinBytes),
          throttleBytesPerSec: null,
          linkShareBytesPerSec: world.linkBytesPerSec / n,
          meanPriority: 1,
          failed: false,
        })),
        reason: `fixed bins of ${(staticBinBytes / 2 ** 30).toFixed(2)} GiB, no throttle`,
      };
    },
  };
}
