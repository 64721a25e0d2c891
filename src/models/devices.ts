/**
 * FlagEmbedding's multi-device encode: contiguous chunks of ceil(n / devices) items, one per
 * device, run concurrently; results joined in input order.
 */
export async function splitAcrossDevices<T, R>(
  items: T[],
  deviceCount: number,
  run: (chunk: T[], device: number) => Promise<R>,
  join: (parts: R[]) => R,
): Promise<R> {
  if (deviceCount <= 1 || items.length <= 1) return run(items, 0);
  const size = Math.ceil(items.length / deviceCount);
  const parts: Promise<R>[] = [];
  for (let d = 0, start = 0; start < items.length; d++, start += size) {
    parts.push(run(items.slice(start, start + size), d));
  }
  return join(await Promise.all(parts));
}
