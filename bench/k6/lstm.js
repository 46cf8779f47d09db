// k6 script: POST /lstm with varied review sentences, each request carrying the caller's deadline.
//   open loop (the default): RATE requests/s whatever the answers do (constant-arrival-rate);
//   closed loop (MODE=closed): VUS callers, each sending when its last answer came (capacity).
// Answers are sorted into admitted (200), shed (503, refused in time) and failed (anything else),
// each latency as the client saw it: waiting for a connection, connecting, sending, waiting, reading.
import http from "k6/http";
import { Counter, Trend } from "k6/metrics";

const sentences = open("./sentences.txt").split("\n").filter((line) => line.length > 0);
const admitted = new Trend("admitted_ms", true);
const shed = new Trend("shed_ms", true);
// Answers that came within the request's own deadline (DEADLINE_MS): the goodput.
const inDeadline = new Counter("in_deadline");
// Failures by kind: no answer (status 0), 502, 504, any other status.
const failed = { 0: new Counter("failed_no_answer"), 502: new Counter("failed_502"), 504: new Counter("failed_504") };
const failedOther = new Counter("failed_other");
// Where an admitted request's time went, from its Server-Timing (the worker's stages) and the
// client's own time: `outside` is what the worker did not see (nginx, the kernel, waiting to be read).
const STAGES = ["preprocess", "queue", "model", "postprocess", "total"];
const stages = Object.fromEntries(STAGES.map((name) => [name, new Trend(`stage_${name}_ms`, true)]));
const outside = new Trend("stage_outside_ms", true);

const duration = `${__ENV.SECONDS}s`;
export const options = {
  discardResponseBodies: true,
  summaryTrendStats: ["p(50)", "p(90)", "p(99)", "p(99.9)", "max", "count"],
  scenarios: {
    load: __ENV.MODE === "closed"
      ? { executor: "constant-vus", vus: Number(__ENV.VUS), duration }
      : { executor: "constant-arrival-rate", rate: Number(__ENV.RATE), timeUnit: "1s", duration,
          preAllocatedVUs: Number(__ENV.VUS), maxVUs: Number(__ENV.MAX_VUS) },
  },
};

const params = { headers: { "Content-Type": "application/json" }, timeout: "10s" };
if (__ENV.DEADLINE_MS) params.headers["X-Request-Timeout-Ms"] = __ENV.DEADLINE_MS;

export default function () {
  const line = sentences[Math.floor(Math.random() * sentences.length)];
  const reply = http.post(__ENV.URL, JSON.stringify({ line }), params);
  const t = reply.timings;
  const ms = t.blocked + t.connecting + t.duration;
  if (reply.status === 200) {
    admitted.add(ms);
    for (const part of (reply.headers["Server-Timing"] || "").split(",")) {
      const found = part.trim().match(/^(\w+);dur=([0-9.]+)$/);
      if (found && stages[found[1]]) stages[found[1]].add(Number(found[2]));
      if (found && found[1] === "total") outside.add(ms - Number(found[2]));
    }
    if (__ENV.DEADLINE_MS && ms <= Number(__ENV.DEADLINE_MS)) inDeadline.add(1);
  }
  else if (reply.status === 503) shed.add(ms);
  else (failed[reply.status] || failedOther).add(1);
}

export function handleSummary(data) {
  return { [__ENV.SUMMARY]: JSON.stringify(data) };
}
