/**
 * The policies by name. Every policy is a pure `(world, previous) → decision` function
 * (./types.ts); this module only builds them from a scenario's parameters.
 */
import { fittedPolicy, type FittedOptions } from './fitted';
import { mirrorOnlyPolicy } from './mirror-only';
import { paperPolicy } from './paper';
import { staticPolicy } from './static';
import { POLICY_NAMES, type Policy, type PolicyName } from './types';
import { unthrottledPolicy } from './unthrottled';

export { POLICY_NAMES };
export type { PolicyName };

export interface PolicyParams {
  /** Bin size of the `static` policy, bytes (> 0). */
  staticBinBytes: number;
  fitted?: FittedOptions;
}

/** True when `name` is one of POLICY_NAMES. */
export function isPolicyName(name: string): name is PolicyName {
  return (POLICY_NAMES as readonly string[]).includes(name);
}

/** Builds the policy called `name`. Throws RangeError for an unknown name. */
export function makePolicy(name: string, params: PolicyParams): Policy {
  switch (name) {
    case 'paper':
      return paperPolicy;
    case 'fitted':
      return fittedPolicy(params.fitted);
    case 'static':
      return staticPolicy(params.staticBinBytes);
    case 'unthrottled':
      return unthrottledPolicy;
    case 'mirror-only':
      return mirrorOnlyPolicy;
    default:
      throw new RangeError(`policy: must be one of ${POLICY_NAMES.join(', ')} (got '${name}')`);
  }
}
