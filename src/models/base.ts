import type { TextTokenizer } from "../runtime/tokenizer.js";
import { type LoadedModel, loadModel, type RuntimeOptions, releaseModel } from "./loader.js";

/**
 * What every model class holds: a loaded model directory (tokenizer, one ONNX session per device)
 * and the getters and release that follow from it.
 */
export abstract class LoadedModelBase {
  readonly modelNameOrPath: string;
  protected readonly model: LoadedModel;

  protected constructor(modelNameOrPath: string, model: LoadedModel) {
    this.modelNameOrPath = modelNameOrPath;
    this.model = model;
  }

  /** Number of ONNX sessions (devices) work is spread over. */
  get deviceCount(): number {
    return this.model.sessions.length;
  }

  /** The longest input (in tokens) the model accepts, if it says. */
  get modelMaxLength(): number | undefined {
    return this.model.maxLength;
  }

  get tokenizer(): TextTokenizer {
    return this.model.tokenizer;
  }

  get loaded(): LoadedModel {
    return this.model;
  }

  /** Recreate the CPU sessions (frees what their memory arenas grew to); no run may be in progress. */
  async renewSessions(): Promise<void> {
    for (const s of this.model.sessions) if (s.device.kind === "cpu") await s.renew();
  }

  /** Release the ONNX sessions. */
  close(): Promise<void> {
    return releaseModel(this.model);
  }
}

/**
 * Load a model directory (or hub id), build a class around it and run its warm-up, so a broken
 * graph fails at load time; the sessions are released if it does.
 */
export async function loadAs<T extends LoadedModelBase>(
  nameOrPath: string,
  options: RuntimeOptions,
  hubRepo: string | undefined,
  make: (model: LoadedModel) => T,
  warmUp: (instance: T) => Promise<void>,
): Promise<T> {
  const model = await loadModel(nameOrPath, options, hubRepo ? { hubRepo } : {});
  try {
    const instance = make(model);
    await warmUp(instance);
    return instance;
  } catch (err) {
    await releaseModel(model).catch(() => {});
    throw err;
  }
}
