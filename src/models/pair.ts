import type { Encoding, TextTokenizer } from "../runtime/tokenizer.js";

/**
 * FlagEmbedding's pair encoding for cross-encoders: the query without special tokens cut to
 * `queryMaxLength`, the passage to `maxLength`, then special tokens added with only the passage
 * truncated so the pair fits `maxLength` (transformers' prepare_for_model, truncation
 * 'only_second'). When even an empty passage would not fit, transformers leaves the pair as is;
 * here it is then cut to `hardLimit` (the model's position table) rather than failing in the graph.
 */
export function encodePair(
  tok: TextTokenizer,
  query: string,
  passage: string,
  queryMaxLength: number,
  maxLength: number,
  hardLimit = Number.POSITIVE_INFINITY,
): Encoding {
  const q = tok.encodeWithoutSpecials(query, queryMaxLength);
  let p = tok.encodeWithoutSpecials(passage, maxLength);
  const specials = tok.numSpecialTokens(true);
  const over = q.length + p.length + specials - maxLength;
  if (over > 0 && p.length > over) p = tok.truncate(p, p.length - over);
  let total = q.length + p.length + specials;
  if (total > hardLimit) {
    const cutP = Math.min(p.length, total - hardLimit);
    p = tok.truncate(p, p.length - cutP);
    total -= cutP;
    return tok.withSpecialTokens(total > hardLimit ? tok.truncate(q, q.length - (total - hardLimit)) : q, p);
  }
  return tok.withSpecialTokens(q, p);
}
