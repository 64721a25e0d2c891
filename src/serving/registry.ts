import { mappingKey } from "../models/mapping.js";
import type { ServedEmbedder, ServedModel, ServedReranker } from "./served.js";

/** Served models by public name, with the lookup rules of the OpenAI-compatible routes. */
export class ModelRegistry {
  readonly models: ServedModel[] = [];

  add(model: ServedModel): void {
    if (this.models.some((m) => m.id === model.id)) {
      throw new Error(`two models are served as "${model.id}"; give one an alias (--model ID=ALIAS)`);
    }
    this.models.push(model);
  }

  embedders(): ServedEmbedder[] {
    return this.models.filter((m): m is ServedEmbedder => m.kind === "embedding");
  }

  rerankers(): ServedReranker[] {
    return this.models.filter((m): m is ServedReranker => m.kind === "rerank");
  }

  find(name: string | undefined): ServedModel | undefined {
    if (name === undefined) return undefined;
    return this.models.find((m) => m.id === name || m.source === name || mappingKey(m.source) === name);
  }

  /**
   * The embedding model a request names. With exactly one embedding model served, other names
   * (e.g. "text-embedding-3-small") are served by it unless strict; undefined means 404.
   */
  embedder(name: string | undefined, strict: boolean): ServedEmbedder | undefined {
    const found = this.find(name);
    if (found) return found.kind === "embedding" ? found : undefined;
    const all = this.embedders();
    if (name === undefined) return all[0];
    return !strict && all.length === 1 ? all[0] : undefined;
  }

  async close(): Promise<void> {
    await Promise.all(this.models.map((m) => m.close()));
  }
}
