/**
 * A request the serving layer refuses, with what the HTTP layer needs to answer it in any
 * dialect: the offending field (`param`) and a machine-readable `code`. The kind decides the
 * status: invalid -> 400, not_found -> 404, not_ready -> 503.
 */
export class RequestError extends Error {
  readonly kind: "invalid" | "not_found" | "not_ready";
  readonly param: string | null;
  readonly code: string | null;
  readonly retryAfterSeconds: number | undefined;

  constructor(
    kind: RequestError["kind"],
    message: string,
    options: { param?: string | null; code?: string | null; retryAfterSeconds?: number } = {},
  ) {
    super(message);
    this.name = "RequestError";
    this.kind = kind;
    this.param = options.param ?? null;
    this.code = options.code ?? null;
    this.retryAfterSeconds = options.retryAfterSeconds;
  }
}

export const invalid = (message: string, param: string | null = null, code: string | null = null) =>
  new RequestError("invalid", message, { param, code });

/** Raised when an input is longer than the model accepts and truncation was refused. */
export class InputTooLongError extends RequestError {
  readonly index: number;
  readonly tokens: number;
  readonly limit: number;
  constructor(index: number, tokens: number, limit: number, param = "input") {
    super(
      "invalid",
      `input ${index} has ${tokens} tokens, more than the model's limit of ${limit}; send it shorter or allow truncation`,
      { param, code: "context_length_exceeded" },
    );
    this.index = index;
    this.tokens = tokens;
    this.limit = limit;
  }
}

/**
 * The model produced NaN or infinite values for some inputs (a broken checkpoint, fp16 overflow).
 * One rule on every route and format: the request fails and names the inputs, never a silent 0.
 */
export class NonFiniteOutputError extends Error {
  readonly indices: number[];
  constructor(indices: number[], what = "input") {
    const shown = indices.slice(0, 10).join(", ") + (indices.length > 10 ? ", ..." : "");
    super(
      `the model produced non-finite values (NaN or infinity) for ${what} ${shown}; nothing is returned for this request`,
    );
    this.name = "NonFiniteOutputError";
    this.indices = indices;
  }
}

/** Throw NonFiniteOutputError when any row has a NaN or infinite value. */
export function checkFinite(rows: ArrayLike<ArrayLike<number> | number | undefined>, what = "input"): void {
  const bad: number[] = [];
  for (let i = 0; i < rows.length; i++) {
    const r = rows[i];
    if (r === undefined) continue;
    if (typeof r === "number") {
      if (!Number.isFinite(r)) bad.push(i);
      continue;
    }
    for (let k = 0; k < r.length; k++) {
      if (!Number.isFinite(r[k] as number)) {
        bad.push(i);
        break;
      }
    }
  }
  if (bad.length) throw new NonFiniteOutputError(bad, what);
}
