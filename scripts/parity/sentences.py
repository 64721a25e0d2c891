"""The parity corpus: 200+ varied texts, the same on every run (hand-written lists plus a seeded
generator). `python sentences.py [OUT.json]` writes them as a JSON array of strings; reference.py
imports `sentences()`.

Kinds: short queries, ordinary sentences, paragraphs past 256 and past 512 tokens, accents and
case (incl. characters whose lower-casing differs between Rust and JavaScript), CJK, other scripts,
emoji, code, numbers, URLs, control / zero-width characters, empty and whitespace-only strings.
"""

from __future__ import annotations

import json
import random
import sys
from pathlib import Path

SEED = 20240521

QUERIES = [
    "what is the capital of france",
    "how to bake sourdough bread",
    "python list comprehension",
    "symptoms of vitamin d deficiency",
    "best hiking trails near denver",
    "who wrote war and peace",
    "convert celsius to fahrenheit",
    "define photosynthesis",
    "cheap flights to tokyo",
    "how many bones in the human body",
    "BGE embedding model",
    "ONNX runtime node",
    "why is the sky blue?",
    "rust vs go performance",
    "mean pooling sentence embeddings",
    "a",
    "?",
    "ok",
    "Hello!",
    "I",
    "dog",
    "New York",
    "COVID-19 vaccine side effects",
    "iPhone 15 Pro Max review",
    "e=mc^2",
    "how do I reset my password",
    "weather tomorrow",
    "translate 'good morning' to spanish",
    "kubernetes pod crashloopbackoff",
    "SELECT * FROM users",
]

SENTENCES = [
    "A man is eating food.",
    "A man is eating a piece of bread.",
    "The girl is carrying a baby.",
    "A man is riding a horse.",
    "A woman is playing violin.",
    "Two men pushed carts through the woods.",
    "A man is riding a white horse on an enclosed ground.",
    "A monkey is playing drums.",
    "Someone in a gorilla costume is playing a set of drums.",
    "The quick brown fox jumps over the lazy dog.",
    "This framework generates embeddings for each input sentence.",
    "Sentences are passed as a list of string.",
    "The new movie is awesome and I loved every minute of it.",
    "The cat sits outside while the dog plays in the garden.",
    "I love pasta, but my sister prefers rice with beans.",
    "Do you like pizza?",
    "The stock market fell sharply on Tuesday after the central bank raised interest rates.",
    "Researchers discovered a new species of frog in the Amazon rainforest.",
    "Please remember to submit your timesheet before Friday at 5 PM.",
    "It's raining cats and dogs out there!",
    "He said, \"I'll be back\" — and he was.",
    "Don't count your chickens before they hatch.",
    "The mitochondria is the powerhouse of the cell.",
    "In 1969, Neil Armstrong became the first person to walk on the Moon.",
    "Water boils at 100 degrees Celsius at sea level.",
    "THIS SENTENCE IS WRITTEN ENTIRELY IN CAPITAL LETTERS.",
    "tHiS sEnTeNcE hAs WeIrD cAsInG.",
    "Well... I don't know!!! Maybe??? Perhaps;;; who knows:::",
    "(parentheses) [brackets] {braces} <angles> «guillemets» „quotes“ ‘single’",
    "state-of-the-art, well-known, mother-in-law, re-enter",
    "e-mail: john.doe+test@example.co.uk, web: https://www.example.com/path?q=1&lang=en#top",
    "Tab\tseparated\tvalues\tand\nnew\nlines\r\nwith CRLF",
    "   leading and trailing spaces   ",
    "multiple     spaces     between     words",
]

UNICODE = [
    "Le café crème coûte 3,50 € à Genève.",
    "Ça va? Très bien, merci! Où est la bibliothèque?",
    "Über den Wolken muss die Freiheit wohl grenzenlos sein. Straße, Maß, Fuß.",
    "GROSSE STRASSE ẞ und ß",
    "El niño comió piña en la mañana; ¿qué más? ¡Olé!",
    "São Paulo é a maior cidade do Brasil; ação, coração, pão.",
    "Tiếng Việt có nhiều dấu: Hà Nội, Sài Gòn, phở bò, bánh mì.",
    "İstanbul, Ankara, IĞDIR, ılık, ŞİŞLİ — Türkçe büyük/küçük harf",
    "ΟΔΟΣ ΣΟΦΙΑΣ ΚΑΙ ΛΟΓΟΣ — Ελληνικά: Σωκράτης, ψυχή, σοφός",  # word-final capital sigma
    "ΚΑΛΩΣ ΟΡΙΣΑΤΕ ΣΤΗΝ ΑΘΗΝΑ",
    "οδος σοφιας και λογος (already lower case)",
    "Москва — столица России. Ёлка, щётка, объём.",
    "Київ, Україна; ґанок, їжак, є.",
    "مرحبا بالعالم، كيف حالك اليوم؟",
    "שלום עולם, מה שלומך?",
    "नमस्ते दुनिया, आप कैसे हैं?",
    "สวัสดีชาวโลก ยินดีต้อนรับ",
    "ქართული ენა, Հայերեն լեզու, አማርኛ ቋንቋ",
    "Combining: e\u0301 a\u0300 o\u0308 n\u0303 (decomposed) vs é à ö ñ (precomposed)",
    "Ligatures ﬁ ﬂ ﬀ ﬃ, fullwidth ＡＢＣ１２３, superscript x² y³, fractions ½ ¾",
    "Zero\u200bwidth\u200cjoiners\u200dand\ufeffBOM and soft\u00adhyphen",
    "Non-breaking\u00a0space, thin\u2009space, ideographic\u3000space",
    "Control chars: bell\x07 null\x00 escape\x1b delete\x7f end",
    "Ångström, Øresund, Æsir, Œuvre, Łódź, Đakovo, Þórr, ð",
    "Math: ∀x∈ℝ, ∑ᵢ xᵢ² ≤ ∞, √2 ≈ 1.414, α+β=γ, ∂f/∂x",
    "Currency: $100, €50, £30, ¥1000, ₹500, ₿0.01, ₩20000",
    "Ⅻ Ⅳ ⅷ ① ② ③ ⑴ ⒜ ℃ ℉ № ™ ©",
    "\u2460\u2461 \u3251 \uff5e \u2015 \u2026 \u00b7",
]

CJK = [
    "北京欢迎你",
    "我爱自然语言处理。今天天气很好，我们去公园散步吧！",
    "機械学習は人工知能の一分野です。",
    "東京タワーは東京都港区にある電波塔です。ひらがな、カタカナ、漢字。",
    "ｶﾀｶﾅ（半角）とカタカナ（全角）",
    "한국어 문장입니다. 서울은 대한민국의 수도입니다.",
    "混合 mixed 文本 text 123 テスト 테스트",
    "《红楼梦》是中国古典四大名著之一，作者曹雪芹。",
    "繁體中文：臺灣的首都是臺北市。",
    "𠮷野家 and 𩸽 (characters outside the BMP)",
    # Supplementary-plane ideographs next to non-ideographs: BERT's normalizer isolates them too.
    "𩸽は北海道の魚です。𠮷さん",
    "a𠮷b 𠮷𩸽 丽x y𠀀",
]

EMOJI = [
    "🎉",
    "I love it! ❤️😍🔥",
    "👨‍👩‍👧‍👦 family emoji with zero-width joiners",
    "👍🏽 👋🏿 skin tones",
    "🇫🇷 🇯🇵 🇺🇸 flags",
    "😀😃😄😁😆😅😂🤣🥲☺️😊😇🙂🙃😉😌😍🥰😘😗😙😚😋😛😝😜🤪🤨🧐🤓😎",
    "The rocket 🚀 launched at 🕐 and landed on the 🌕.",
    "Keycaps 1️⃣ 2️⃣ #️⃣ and ©️ ®️ ‼️",
]

CODE = [
    "def add(a: int, b: int) -> int:\n    return a + b",
    "const x = arr.map((v) => v * 2).filter(Boolean);",
    "SELECT id, name FROM users WHERE age > 30 ORDER BY name DESC LIMIT 10;",
    "for (int i = 0; i < n; ++i) { sum += a[i] * b[i]; }",
    "#include <stdio.h>\nint main(void) { printf(\"hello\\n\"); return 0; }",
    "<div class=\"container\"><p id='x'>Hello &amp; welcome</p></div>",
    '{"key": "value", "list": [1, 2, 3], "nested": {"a": null, "b": true}}',
    "^(?:[a-z0-9!#$%&'*+/=?^_`{|}~-]+)@(?:[a-z0-9-]+\\.)+[a-z]{2,}$",
    "git commit -m 'fix: handle empty input' && git push origin main",
    "fn main() { let v: Vec<u8> = (0..10).collect(); println!(\"{:?}\", v); }",
    "import numpy as np\nx = np.linspace(0, 1, 100)\ny = np.sin(2 * np.pi * x)",
    "$ curl -X POST http://localhost:8080/v1/embeddings -H 'Content-Type: application/json'",
    "snake_case_identifier camelCaseIdentifier PascalCaseIdentifier SCREAMING_SNAKE_CASE kebab-case-id",
    "0x1F 0b1010 0o755 1e-9 3.14159265358979 -42 +7 1_000_000",
]

NUMBERS = [
    "42",
    "3.14159",
    "1,234,567.89",
    "2024-05-21T13:45:00Z",
    "+1 (555) 123-4567",
    "The package weighs 2.5kg and costs $19.99 (incl. 20% VAT).",
    "Version 1.2.3-beta.4+build.567",
    "IPv4 192.168.0.1, IPv6 2001:0db8:85a3::8a2e:0370:7334",
    "ISBN 978-3-16-148410-0",
    "1234567890123456789012345678901234567890",
    "Room 101, floor 7, building B-12, ZIP 94107",
    "-273.15 °C = 0 K",
]

EDGE = [
    "",
    " ",
    "   ",
    "\t",
    "\n",
    " \t\n\r ",
    "\u3000",
    "\u00a0",
    "\u200b",
    ".",
    "...",
    "!!!???",
    "-",
    "a" * 120,  # one word longer than WordPiece's max_input_chars_per_word (100): [UNK]
    "supercalifragilisticexpialidocious antidisestablishmentarianism pneumonoultramicroscopicsilicovolcanoconiosis",
    "[CLS] [SEP] [PAD] [MASK] [UNK] literal special tokens in text",
    "[cls] <s> </s> <pad> <unk> lower-cased look-alikes",
    "word " * 300,  # 300 identical tokens: past 256
    "x",
    "\\",
    "'",
    '"',
]

# Building blocks for the generated sentences and long paragraphs.
SUBJECTS = [
    "The engineer", "A small child", "Our team", "The committee", "My neighbour", "The old fisherman",
    "A curious student", "The government", "This algorithm", "The orchestra", "Every participant",
    "The startup", "A stray cat", "The professor", "The new model",
]
VERBS = [
    "quickly reviewed", "carefully explained", "completely ignored", "happily accepted", "rejected",
    "painted", "measured", "translated", "optimised", "described", "celebrated", "questioned",
]
OBJECTS = [
    "the quarterly report", "a broken bicycle", "the ancient manuscript", "the results of the experiment",
    "a bowl of noodles", "the proposal for a new bridge", "the sunset over the harbour",
    "an unexpected error message", "the rules of chess", "a list of embeddings", "the weather forecast",
    "the history of the Roman empire",
]
TAILS = [
    "before lunch", "without saying a word", "in front of everyone", "during the storm", "last year",
    "for the third time", "with great enthusiasm", "despite the noise", "after midnight", "in Paris",
    "at the conference in Zürich", "while drinking café au lait",
]
TOPIC_SENTENCES = [
    "Sentence embeddings map text to dense vectors so that semantically similar texts lie close together.",
    "Mean pooling averages the token representations, weighting each real token equally and ignoring padding.",
    "Transformers process all tokens in parallel, relying on self-attention to mix information between them.",
    "Tokenization splits text into sub-word units drawn from a fixed vocabulary learned from a large corpus.",
    "Truncation keeps only the first tokens of a long input, so anything past the limit is silently dropped.",
    "Cosine similarity compares the direction of two vectors and ignores their length entirely.",
    "ONNX Runtime executes exported graphs on many devices with a common set of optimised kernels.",
    "Retrieval systems first embed a query and then search an index for the nearest passage vectors.",
    "Quantization stores weights with fewer bits, trading a little accuracy for speed and memory.",
    "Evaluation benchmarks measure how well embeddings capture similarity, clustering and retrieval quality.",
    "The river flooded the valley in spring, and the villagers moved their animals to higher ground.",
    "In the evening the market square filled with musicians, food stalls and children chasing pigeons.",
    "Historians still debate the causes of the collapse, pointing to drought, war and failing trade routes.",
    "The recipe calls for two cups of flour, a pinch of salt, three eggs and a generous spoon of butter.",
    "Le matin, la ville s'éveille lentement; les cafés ouvrent et l'odeur du pain frais envahit les rues.",
    "Am Abend saßen wir am Ufer des Sees und schauten zu, wie die Sonne hinter den Bergen verschwand.",
]


def generated(rng: random.Random, n: int) -> list[str]:
    out = []
    for i in range(n):
        s = f"{rng.choice(SUBJECTS)} {rng.choice(VERBS)} {rng.choice(OBJECTS)} {rng.choice(TAILS)}."
        if i % 5 == 1:
            s = s.upper()
        elif i % 5 == 2:
            s = f"{s} {rng.choice(TOPIC_SENTENCES)}"
        elif i % 5 == 3:
            s = f"{rng.randint(1, 9999)} {s} ({rng.random():.4f})"
        elif i % 5 == 4:
            s = f"{s} {rng.choice(UNICODE + CJK + EMOJI)}"
        out.append(s)
    return out


def paragraphs(rng: random.Random) -> list[str]:
    """Long inputs: some between 256 and 512 tokens, some past 512, one of each script kind."""
    out = []
    for n_sent in (6, 12, 14, 18, 25, 32, 40, 60):
        out.append(" ".join(rng.choice(TOPIC_SENTENCES) for _ in range(n_sent)))
    out.append(" ".join(rng.choice(SENTENCES) for _ in range(50)))
    out.append("".join(rng.choice(CJK) for _ in range(30)))  # one token per Han character
    out.append("\n\n".join(rng.choice(CODE) for _ in range(25)))
    out.append(" ".join(rng.choice(UNICODE) for _ in range(20)))
    out.append(" ".join(rng.choice(EMOJI) for _ in range(40)))
    out.append(" ".join(str(rng.randint(0, 10**6)) for _ in range(300)))
    out.append(" ".join(generated(rng, 30)))
    return out


def sentences() -> list[str]:
    rng = random.Random(SEED)
    texts = QUERIES + SENTENCES + UNICODE + CJK + EMOJI + CODE + NUMBERS + EDGE
    texts += paragraphs(rng)
    texts += generated(rng, 60)
    return texts


def main() -> int:
    texts = sentences()
    if len(sys.argv) > 1:
        path = Path(sys.argv[1])
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(texts, ensure_ascii=False, indent=1) + "\n", encoding="utf-8")
        print(f"{len(texts)} texts -> {path}")
    else:
        print(f"{len(texts)} texts")
    return 0


if __name__ == "__main__":
    sys.exit(main())
