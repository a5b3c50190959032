// How long a stage has run and how long it has left, from its progress events alone. Pure functions of
// numbers (times in ms on the server's clock, steps), no DOM and no clock of their own, so the job page
// and its tests share them.
//
// A stage starts at `start`: its step-0 event, or else the job's event before its first report (a layer
// stage first reports "layer 1 of N", once that layer is done). Each report after the first one seen
// gives the time per step since the previous report, dt / dsteps (reports are throttled, so dsteps may
// be several); the rate is the exponentially weighted mean of those, each step weighing ALPHA:
//   perStep ← perStep + (1 − (1 − ALPHA)^dsteps) · (dt / dsteps − perStep)
// Time left = perStep · (total − step) less what the current step has already taken, but never less than
// the steps after it (perStep · (total − step − 1)) and never negative. Until two distinct steps are
// seen there is no rate and the time left is null ("estimating…"); a finished stage has none either.

export const ALPHA = 0.3;

/** A stage that began at `start` and has reported nothing yet. */
export function startTrack(start) {
  return { start, step: null, total: 0, last: null, perStep: null, end: null };
}

/** The track after a report "step of total" made at `time`; a repeat or an older step changes nothing. */
export function observe(track, time, step, total) {
  if (track.step !== null && step <= track.step) return track;
  let perStep = track.perStep;
  if (track.last !== null) {
    const steps = step - track.last.step;
    const each = Math.max(0, time - track.last.time) / steps;
    perStep = perStep === null ? each : perStep + (1 - (1 - ALPHA) ** steps) * (each - perStep);
  }
  const end = total > 0 && step >= total ? time : null;
  return { ...track, step, total, last: { time, step }, perStep, end };
}

/** {fraction, elapsed, remaining, done} at server time `now`: remaining is null while estimating or done. */
export function estimate(track, now) {
  const done = track.end !== null;
  const latest = track.last ? track.last.time : track.start;
  const at = done ? track.end : Math.max(now, latest); // a late or skewed clock never runs time backwards
  const elapsed = Math.max(0, at - track.start);
  const fraction = done ? 1 : track.total > 0 ? Math.min(1, Math.max(0, track.step ?? 0) / track.total) : 0;
  if (done || track.perStep === null) return { fraction, elapsed, remaining: null, done };
  const left = track.total - track.step;
  const spent = at - latest;
  const remaining = Math.max(0, track.perStep * (left - 1), track.perStep * left - spent);
  return { fraction, elapsed, remaining, done };
}
