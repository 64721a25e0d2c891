import { StringDecoder } from "node:string_decoder";

/**
 * Lines of a byte stream, without their line ends (`\n` or `\r\n`). A UTF-8 character cut by a
 * chunk boundary is held back until its last byte arrives: decoding chunk by chunk would turn it
 * into U+FFFD.
 */
export async function* splitLines(source: AsyncIterable<Buffer | string>): AsyncGenerator<string> {
  const decoder = new StringDecoder("utf8");
  let rest = "";
  for await (const chunk of source) {
    rest += typeof chunk === "string" ? chunk : decoder.write(chunk);
    let nl = rest.indexOf("\n");
    while (nl >= 0) {
      yield rest.slice(0, nl).replace(/\r$/, "");
      rest = rest.slice(nl + 1);
      nl = rest.indexOf("\n");
    }
  }
  rest += decoder.end();
  if (rest.length) yield rest.replace(/\r$/, "");
}
