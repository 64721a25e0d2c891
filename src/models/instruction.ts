import { FlagserveError } from "../runtime/errors.js";

/**
 * Python's `str.format` for the positional templates FlagEmbedding uses ("{}{}",
 * "Instruct: {}\nQuery: {}", "{0}..{1}"), including `{{`/`}}` escapes. A literal backslash-n
 * in the template becomes a newline first, as FlagEmbedding's get_detailed_instruct does.
 */
export function formatInstruction(template: string, ...args: string[]): string {
  const t = template.includes("\\n") ? template.replaceAll("\\n", "\n") : template;
  let auto = 0;
  let out = "";
  for (let i = 0; i < t.length; i++) {
    const c = t[i];
    if (c === "{" && t[i + 1] === "{") {
      out += "{";
      i++;
    } else if (c === "}" && t[i + 1] === "}") {
      out += "}";
      i++;
    } else if (c === "{") {
      const end = t.indexOf("}", i);
      if (end < 0)
        throw new FlagserveError("invalid_input", `instruction format "${template}" has an unclosed {`);
      const field = t.slice(i + 1, end);
      const index = field === "" ? auto++ : Number(field);
      if (!Number.isInteger(index) || index < 0 || index >= args.length) {
        throw new FlagserveError(
          "invalid_input",
          `instruction format "${template}" has an unusable field {${field}}`,
        );
      }
      out += args[index];
      i = end;
    } else if (c === "}") {
      throw new FlagserveError("invalid_input", `instruction format "${template}" has a single }`);
    } else {
      out += c;
    }
  }
  return out;
}
