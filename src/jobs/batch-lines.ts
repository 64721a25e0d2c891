import { randomUUID } from "node:crypto";

/** An OpenAI Batch API error line for a request that could not be answered. */
export function batchErrorLine(line: string, code: string, message: string): string {
  let customId: string | null = null;
  try {
    const parsed = JSON.parse(line) as { custom_id?: unknown };
    if (typeof parsed.custom_id === "string") customId = parsed.custom_id;
  } catch {
    // the line is not JSON: no custom_id to report
  }
  return JSON.stringify({
    id: `batch_req_${randomUUID().replaceAll("-", "")}`,
    custom_id: customId,
    response: null,
    error: { code, message },
  });
}
