/**
 * What went wrong, in words a user can act on. The kind lets the CLI print one line and the HTTP
 * layer choose a status code without parsing messages.
 */
export type ErrorKind =
  | "model_files" // a model directory lacks a file, or a file is corrupt
  | "unknown_model" // a name that no mapping knows
  | "invalid_input" // bad arguments to a library call
  | "device" // an execution provider or device that cannot be used
  | "hub_not_found" // repository, revision or file missing on the hub
  | "hub_auth" // the hub refused the credentials
  | "hub_offline" // offline mode and the cache lacks what is needed
  | "hub_unreachable" // the hub could not be reached
  | "not_supported"; // a feature this build does not provide

export class FlagserveError extends Error {
  readonly kind: ErrorKind;

  constructor(kind: ErrorKind, message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.name = "FlagserveError";
    this.kind = kind;
  }
}

export function isFlagserveError(err: unknown, kind?: ErrorKind): err is FlagserveError {
  return err instanceof FlagserveError && (kind === undefined || err.kind === kind);
}
