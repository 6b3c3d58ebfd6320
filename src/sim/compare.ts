/**
 * Runs several policies on one scenario (what `dpa simulate` reports and the target tests check).
 */
import type { FittedOptions } from '../policy/fitted';
import { makePolicy, POLICY_NAMES, type PolicyName } from '../policy/index';
import { simulate, type SimOptions, type SimOutput } from './run';
import type { Scenario } from './scenario';

/** Results of `names` (default: all five policies) on `scenario`, in that order; `fitted` tunes that policy. */
export function simulateAll(scenario: Scenario, names: readonly PolicyName[] = POLICY_NAMES, options: SimOptions = {}, fitted?: FittedOptions): SimOutput[] {
  return names.map((name) => simulate(scenario, makePolicy(name, { staticBinBytes: scenario.staticBinBytes, ...(fitted ? { fitted } : {}) }), options));
}

/** A trace interval giving at most ~`points` samples over the scenario. */
export function traceIntervalSec(scenario: Scenario, points = 1500): number {
  return Math.max(scenario.tickMs / 1000, scenario.maxSimSeconds / points);
}
