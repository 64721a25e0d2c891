import { mappingKey } from "../models/mapping.js";
import type { ServedEmbedder, ServedModel, ServedReranker } from "./served.js";

/**
 * The suffix of the name under which every embedding model is also served for queries: clients
 * that can only set a model name (LangChain's and LlamaIndex's OpenAI embedders) get the model's
 * query instruction by naming "MODEL:query". A colon, as in Ollama's "name:tag", cannot clash with
 * hub ids ("org/name") or directory names people serve.
 */
export const QUERY_SUFFIX = ":query";

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
    const base = this.queryModel(name)?.id ?? name;
    return this.models.find((m) => m.id === base || m.source === base || mappingKey(m.source) === base);
  }

  /** The embedding model `name` serves for queries, when it is one's "MODEL:query" name. */
  queryModel(name: string | undefined): ServedEmbedder | undefined {
    if (!name?.endsWith(QUERY_SUFFIX)) return undefined;
    const base = name.slice(0, -QUERY_SUFFIX.length);
    const found = this.models.find(
      (m) => m.id === base || m.source === base || mappingKey(m.source) === base,
    );
    return found?.kind === "embedding" ? found : undefined;
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
