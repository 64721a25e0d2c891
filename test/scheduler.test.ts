import assert from "node:assert/strict";
import { describe, test } from "node:test";
import {
  BatchScheduler,
  CancelledError,
  OverloadedError,
  TooLargeForDeadlineError,
} from "../src/serving/scheduler.js";

/** An input of `len` tokens, tagged with its request. */
interface Item {
  ids: number[];
  tag: string;
}
const item = (tag: string, len: number): Item => ({ ids: new Array(len).fill(1), tag });
const many = (tag: string, n: number, len: number) => Array.from({ length: n }, () => item(tag, len));

/**
 * A device the test drives by hand: each batch waits until the test releases it, so the order in
 * which the scheduler forms batches can be observed exactly.
 */
class ManualDevice {
  batches: { tags: string[]; release: () => void; signal: AbortSignal }[] = [];
  runner = (items: Item[], _slot: number, signal: AbortSignal): Promise<string[]> =>
    new Promise((resolve) => {
      this.batches.push({
        tags: items.map((i) => i.tag),
        release: () => resolve(items.map((i) => i.tag)),
        signal,
      });
    });
  async next(index: number): Promise<{ tags: string[]; release: () => void; signal: AbortSignal }> {
    for (let i = 0; i < 500 && this.batches.length <= index; i++) await new Promise((r) => setTimeout(r, 2));
    const b = this.batches[index];
    assert.ok(b, `batch ${index} was formed`);
    return b;
  }
}

const far = () => Date.now() + 60_000;
const opts = { maxBatchTokens: 4096, maxBatchSize: 64, windowMs: 0, concurrency: 2, starvationMs: 10_000 };

describe("BatchScheduler", () => {
  test("a small request goes into the next batch, alone, however large the queued requests are", async () => {
    const device = new ManualDevice();
    const s = new BatchScheduler<Item, string>(device.runner, opts);
    const bulk = ["A", "B", "C", "D"].map((t) => s.submit(many(t, 200, 256), { deadline: far() }));
    const first = await device.next(0);
    assert.ok(
      first.tags.every((t) => t === "A"),
      "a full batch of the first bulk request",
    );
    const small = s.submit([item("q", 8)], { deadline: far() });
    // A second, smaller batch may already be in the pipe; the small request is next after it.
    const second = await device.next(1);
    first.release();
    const third = await device.next(2);
    const withQuery = [second, third].find((b) => b.tags.includes("q"));
    assert.ok(withQuery, `the query is in one of the next two batches: ${second.tags} / ${third.tags}`);
    assert.deepEqual(withQuery.tags, ["q"], "and its batch holds no bulk input");
    withQuery.release();
    assert.deepEqual(await small, ["q"]);
    for (const b of device.batches) b.release();
    // Drain the rest so the promises settle.
    for (let i = 3; ; i++) {
      const done = await Promise.race([
        Promise.all(bulk).then(() => true),
        new Promise((r) => setTimeout(() => r(false), 20)),
      ]);
      if (done) break;
      (await device.next(i)).release();
    }
  });

  test("large requests share the device by least service: no request waits for another to finish", async () => {
    const device = new ManualDevice();
    const s = new BatchScheduler<Item, string>(device.runner, { ...opts, concurrency: 1 });
    const reqs = ["A", "B", "C"].map((t) => s.submit(many(t, 64, 256), { deadline: far() }));
    const owners: string[] = [];
    for (let i = 0; i < 6; i++) {
      const b = await device.next(i);
      owners.push(b.tags[0] as string);
      b.release();
    }
    assert.deepEqual(new Set(owners.slice(0, 3)), new Set(["A", "B", "C"]), `first three batches: ${owners}`);
    for (let i = 6; ; i++) {
      const done = await Promise.race([
        Promise.all(reqs).then(() => true),
        new Promise((r) => setTimeout(() => r(false), 20)),
      ]);
      if (done) break;
      (await device.next(i)).release();
    }
  });

  test("a cancelled request leaves the queue at once; a batch nobody waits for is called off", async () => {
    const device = new ManualDevice();
    const s = new BatchScheduler<Item, string>(device.runner, { ...opts, concurrency: 1 });
    const blocker = s.submit(many("A", 16, 256), { deadline: far() });
    const first = await device.next(0);
    const abort = new AbortController();
    const gone = s.submit(many("B", 300, 256), { deadline: far(), signal: abort.signal });
    assert.equal(s.queued, 300);
    abort.abort(new CancelledError());
    await assert.rejects(gone, CancelledError);
    assert.equal(s.queued, 0, "its inputs left the queue");
    first.release();
    await blocker;
    assert.equal(device.batches.length, 1, "nothing was computed for it");

    // A batch already sent for a request that then goes away is called off (its signal aborts).
    const abort2 = new AbortController();
    const c = s.submit(many("C", 4, 64), { deadline: far(), signal: abort2.signal });
    const sent = await device.next(1);
    abort2.abort(new CancelledError());
    await assert.rejects(c, CancelledError);
    assert.ok(sent.signal.aborted);
    sent.release();
  });

  test("admission: 413 for a request too large for its deadline at the measured rate, 429 when the queue ahead is", async () => {
    // Every batch takes 20 ms: the scheduler measures its own rate.
    const runner = (items: Item[]) =>
      new Promise<string[]>((r) => setTimeout(() => r(items.map((i) => i.tag)), 20));
    const s = new BatchScheduler<Item, string>(runner, { ...opts, concurrency: 1, maxQueuedInputs: 100_000 });
    for (let i = 0; i < 5; i++) await s.submit(many("warm", 16, 256), { deadline: far() });
    const rate = s.tokensPerSecond as number;
    assert.ok(rate > 0, "the rate is measured");
    const deadline = Date.now() + 2000;
    assert.throws(() => s.admit(10, rate * 10, deadline), TooLargeForDeadlineError);
    const fits = s.admit(1, rate * 0.5, deadline);
    fits.release();
    // Fill the queue with a second's work; a large request that could not finish after it is refused.
    const backlog = s.submit(many("bulk", Math.ceil(rate / 256), 256), { deadline: far() });
    assert.throws(() => s.admit(100, rate * 1.2, deadline), OverloadedError);
    // A small request still fits: it goes ahead of the bulk work.
    s.admit(1, 8, deadline).release();
    await backlog;
  });

  test("admission on a slow model: small requests are not refused for work that is not there", async () => {
    // One input per batch, 20 ms each: a few hundred tokens/s, the rate of a large model on a CPU.
    const runner = (items: Item[]) =>
      new Promise<string[]>((r) => setTimeout(() => r(items.map((i) => i.tag)), 20));
    const s = new BatchScheduler<Item, string>(runner, {
      ...opts,
      maxBatchTokens: 16_384,
      maxBatchSize: 1,
      concurrency: 1,
    });
    for (let i = 0; i < 5; i++) await s.submit(many("warm", 1, 8), { deadline: far() });
    const rate = s.tokensPerSecond as number;
    assert.ok(rate < 1000, `slow: ${rate} tokens/s`);
    // Idle: admitted.
    s.admit(1, 8, Date.now() + 30_000).release();
    // 64 clients' one-input requests queued (~1.3 s of work): the next one still fits in 30 s.
    const queued = Array.from({ length: 64 }, (_, i) => s.submit(many(`q${i}`, 1, 8), { deadline: far() }));
    s.admit(1, 8, Date.now() + 30_000).release();
    // ...but not in a deadline shorter than that work.
    assert.throws(() => s.admit(1, 8, Date.now() + 1000), OverloadedError);
    await Promise.all(queued);
  });
});
