/**
 * How a link is shared: weighted max-min fairness ("water filling"). A flow never gets more than
 * it asks for; what it leaves goes to the others in proportion to their weights. This is what
 * TCP flows over one bottleneck approach, and it is work-conserving: the link is never idle
 * while some flow still wants bytes. The simulator uses it between migrations (weights = the
 * policy's link shares) and, inside one migration, between its flows (bulk copy, mirror
 * backlog, synchronous guest writes, RAM stream); `fitted` uses the same rule to project.
 */

/**
 * Fills `out[i]` with flow i's rate, bytes/s.
 * @param capacityBytesPerSec the link, ≥ 0.
 * @param demandBytesPerSec what each flow can use, ≥ 0 (Infinity allowed).
 * @param weights relative shares, > 0 (a flow with weight 0 only gets what others leave).
 */
export function waterFill(capacityBytesPerSec: number, demandBytesPerSec: ArrayLike<number>, weights: ArrayLike<number>, out: Float64Array | number[]): void {
  const n = demandBytesPerSec.length;
  if (state.length < n) state = new Uint8Array(2 * n);
  let remaining = Math.max(0, capacityBytesPerSec);
  for (let i = 0; i < n; i++) {
    out[i] = 0;
    // 1 = competing in pass 1 (weight > 0), 2 = pass 2 (weight 0: only leftovers), 0 = done.
    state[i] = demandBytesPerSec[i]! > 0 ? (weights[i]! > 0 ? 1 : 2) : 0;
  }
  for (let pass = 1; pass <= 2; pass++) {
    while (remaining > 1e-9) {
      let wsum = 0;
      for (let i = 0; i < n; i++) if (state[i] === pass) wsum += pass === 1 ? weights[i]! : 1;
      if (wsum === 0) break;
      const perWeight = remaining / wsum;
      let satisfied = false;
      for (let i = 0; i < n; i++) {
        if (state[i] !== pass) continue;
        const want = demandBytesPerSec[i]! - out[i]!;
        if (want <= (pass === 1 ? weights[i]! : 1) * perWeight) {
          out[i] = out[i]! + want;
          remaining -= want;
          state[i] = 0;
          satisfied = true;
        }
      }
      if (satisfied) continue;
      for (let i = 0; i < n; i++) {
        if (state[i] !== pass) continue;
        out[i] = out[i]! + (pass === 1 ? weights[i]! : 1) * perWeight;
        state[i] = 0;
      }
      remaining = 0;
    }
  }
}

/** Scratch flags of waterFill (grown on demand; the function is not re-entrant by nature). */
let state = new Uint8Array(64);

/**
 * Two flows sharing `capacity` fairly (equal weights): returns the first flow's rate; the second
 * gets min(its demand, capacity − that).
 */
export function fairShareOfFirst(capacityBytesPerSec: number, firstDemand: number, secondDemand: number): number {
  const half = capacityBytesPerSec / 2;
  if (firstDemand <= half) return Math.max(0, firstDemand);
  if (secondDemand <= half) return Math.max(0, Math.min(firstDemand, capacityBytesPerSec - secondDemand));
  return half;
}
