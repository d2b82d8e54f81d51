//! Recognising `tokenizer.ggml.pre` for byte-level BPE tokenizers the way llama.cpp's converter
//! does (spec §5.3): tokenize a fixed check text with the model's HF tokenizer (special tokens
//! added as by default), print the id list as Python does (`[1, 2, 3]`), hash it with SHA-256
//! and look the digest up in the converter's table of known tokenizers.
//!
//! smelt has no tokenizer library, so this module carries a small HF-`tokenizer.json`
//! encoder sufficient for that one text: normalizers NFC/NFKC/Lowercase (as they act on the
//! check text), pre-tokenizers `ByteLevel`, `Split` (regex, isolated) and `Digits` (also in a
//! `Sequence`), a byte-level BPE model (merge ranks, `ignore_merges`), added tokens, and the
//! `TemplateProcessing` / `RobertaProcessing` / `BertProcessing` / `ByteLevel` post-processors.
//! Regexes are run by a small backtracking matcher for the subset HF pre-tokenizer patterns use
//! (classes, `\p{L}`/`\p{N}`/`\p{M}`/`\p{P}`/`\p{S}`, `\s`, groups, `(?i:)`, lookaheads,
//! greedy quantifiers). Its Unicode classes are exact for the check text's characters, which is
//! all the hash depends on. Anything outside this subset is reported, so the user can pass
//! `--pre`.

use std::collections::HashMap;

use serde_json::Value;
use sha2::{Digest, Sha256};

use super::error::{GgufError, GgufResult};

/// llama.cpp's pre-tokenizer check text (`chktxt` in `convert_hf_to_gguf.py`).
pub const CHECK_TEXT: &str = "\n \n\n \n\n\n \t \t\t \t\n  \n   \n    \n     \n\u{1f680} (normal) \u{1f636}\u{200d}\u{1f32b}\u{fe0f} (multiple emojis concatenated) \u{2705} \u{1f999}\u{1f999} 3 33 333 3333 33333 333333 3333333 33333333 3.3 3..3 3...3 \u{1780}\u{17b6}\u{1793}\u{17cb}\u{178f}\u{17c2}\u{1796}\u{17b7}\u{179f}\u{17c1}\u{179f}\u{17a2}\u{17b6}\u{1785}\u{1f601} ?\u{6211}\u{60f3}\u{5728}apple\u{5de5}\u{4f5c}1314151\u{5929}\u{ff5e} ------======= \u{043d}\u{0435}\u{0449}\u{043e} \u{043d}\u{0430} \u{0411}\u{044a}\u{043b}\u{0433}\u{0430}\u{0440}\u{0441}\u{043a}\u{0438} ''''''```````\"\"\"\"......!!!!!!?????? I've been 'told he's there, 'RE you sure? 'M not sure I'll make it, 'D you like some tea? We'Ve a'lL";

/// Check-text digests from llama.cpp's converter and the pre-tokenizer name each selects
/// (where the converter's table lists a digest twice, the later entry wins, as in its chain of
/// `if`s). Byte-level BPE entries only.
pub const KNOWN: &[(&str, &str)] = &[
    (
        "b6e8e1518dc4305be2fe39c313ed643381c4da5db34a98f6a04c093f8afbe99b",
        "chatglm-bpe",
    ),
    (
        "81d72c7348a9f0ebe86f23298d37debe0a5e71149e29bd283904c02262b27516",
        "chatglm-bpe",
    ),
    (
        "a1336059768a55c99a734006ffb02203cd450fed003e9a71886c88acf24fdbc2",
        "glm4",
    ),
    (
        "9ca2dd618e8afaf09731a7cf6e2105b373ba6a1821559f258b272fe83e6eb902",
        "glm4",
    ),
    (
        "cdf5f35325780597efd76153d4d1c16778f766173908894c04afc20108536267",
        "glm4",
    ),
    (
        "1431a23e583c97432bc230bff598d103ddb5a1f89960c8f1d1051aaa944d0b35",
        "minerva-7b",
    ),
    (
        "7e57df22b1fe23a7b1e1c7f3dc4e3f96d43a4eb0836d0c6bdc3436d7b2f1c664",
        "hunyuan",
    ),
    (
        "bba3b3366b646dbdded5dbc42d59598b849371afc42f7beafa914afaa5b70aa6",
        "hunyuan-dense",
    ),
    (
        "a6b57017d60e6edb4d88ecc2845188e0eb333a70357e45dcc9b53964a73bbae6",
        "falcon-h1",
    ),
    (
        "60476e1243776c4fb1b993dbd7a5f15ac22f83c80afdf425fa5ae01c8d44ef86",
        "falcon-h1",
    ),
    (
        "3eda48b4c4dc7de733d1a8b3e3b4a85243dbbf704da2ee9d42c6beced8897896",
        "falcon-h1",
    ),
    (
        "48f8e02c0359c0bbdd82f26909171fac1c18a457bb47573ed1fe3bbb2c1cfd4b",
        "falcon-h1",
    ),
    (
        "81212dc7cdb7e0c1074ca62c5aeab0d43c9f52b8a737be7b12a777c953027890",
        "kimi-k2",
    ),
    (
        "d4540891389ea895b53b399da6ac824becc30f2fba0e9ddbb98f92e55ca0e97c",
        "qwen2",
    ),
    (
        "66b8d4e19ab16c3bfd89bce5d785fb7e0155e8648708a1f42077cb9fe002c273",
        "grok-2",
    ),
    (
        "0fe1cf6eda062318a1af7270f3331a85c539a01778ff948e24388e949c5282f4",
        "gpt-2",
    ),
    (
        "0ef9807a4087ebef797fc749390439009c3b9eda9ad1a097abbe738f486c01e5",
        "llama-bpe",
    ),
    (
        "049ecf7629871e3041641907f3de7c733e4dbfdc736f57d882ba0b0845599754",
        "deepseek-llm",
    ),
    (
        "347715f544604f9118bb75ed199f68779f423cabb20db6de6f31b908d04d7821",
        "deepseek-coder",
    ),
    (
        "8aeee3860c56296a157a1fe2fad249ec40aa59b1bb5709f4ade11c4e6fe652ed",
        "falcon",
    ),
    (
        "9d032fcbd5501f4a38150912590928bfb36091efb5df11b8e2124b0390e3fb1e",
        "falcon3",
    ),
    (
        "35d91631860c815f952d711435f48d356ebac988362536bed955d43bfa436e34",
        "starcoder",
    ),
    (
        "3ce83efda5659b07b1ad37ca97ca5797ea4285d9b9ab0dc679e4a720c9da7454",
        "gpt-2",
    ),
    (
        "32d85c31273f8019248f2559fed492d929ea28b17e51d81d3bb36fff23ca72b3",
        "stablelm2",
    ),
    (
        "6221ad2852e85ce96f791f476e0b390cf9b474c9e3d1362f53a24a06dc8220ff",
        "refact",
    ),
    (
        "9c2227e4dd922002fb81bde4fc02b0483ca4f12911410dee2255e4987644e3f8",
        "command-r",
    ),
    (
        "e636dc30a262dcc0d8c323492e32ae2b70728f4df7dfe9737d9f920a282b8aea",
        "qwen2",
    ),
    (
        "b6dc8df998e1cfbdc4eac8243701a65afe638679230920b50d6f17d81c098166",
        "olmo",
    ),
    (
        "a8594e3edff7c29c003940395316294b2c623e09894deebbc65f33f1515df79e",
        "dbrx",
    ),
    (
        "c136ed14d01c2745d4f60a9596ae66800e2b61fa45643e72436041855ad4089d",
        "smaug-bpe",
    ),
    (
        "c7ea5862a53e4272c035c8238367063e2b270d51faa48c0f09e9d5b54746c360",
        "poro-chat",
    ),
    (
        "7fc505bd3104ca1083b150b17d088b59534ede9bde81f0dd2090967d7fe52cee",
        "viking",
    ),
    (
        "b53802fb28e26d645c3a310b34bfe07da813026ec7c7716883404d5e0f8b1901",
        "jais",
    ),
    (
        "7b3e7548e4308f52a76e8229e4e6cc831195d0d1df43aed21ac6c93da05fec5f",
        "codeshell",
    ),
    (
        "63b97e4253352e6f357cc59ea5b583e3a680eaeaf2632188c2b952de2588485e",
        "tekken",
    ),
    (
        "855059429035d75a914d1eda9f10a876752e281a054a7a3d421ef0533e5b6249",
        "smollm",
    ),
    (
        "3c30d3ad1d6b64202cd222813e7736c2db6e1bd6d67197090fc1211fbc612ae7",
        "bloom",
    ),
    (
        "bc01ce58980e1db43859146dc51b1758b3b88729b217a74792e9f8d43e479d21",
        "gpt3-finnish",
    ),
    (
        "4e2b24cc4770243d65a2c9ec19770a72f08cffc161adbb73fcbb6b7dd45a0aae",
        "exaone",
    ),
    (
        "fcace8b9cac38ce847670c970cd5892031a753a1ef381abd1d9af00f713da085",
        "phi-2",
    ),
    (
        "60824e3c0d9401f89943cbb2fff727f0e2d4c545ba4df2d6e4f09a6db0f5b450",
        "chameleon",
    ),
    (
        "8b5a93ed704057481f240da0be7e7dca721d7f8f4755263b6807227a2cbeae65",
        "roberta-bpe",
    ),
    (
        "ad851be1dba641f2e3711822f816db2c265f788b37c63b4e1aeacb9ee92de8eb",
        "gigachat",
    ),
    (
        "d4c8f286ea6b520b3d495c4455483cfa2302c0cfcd4be05d781b6a8a0a7cdaf1",
        "megrez",
    ),
    (
        "877081d19cf6996e2c4ff0e1236341e9b7bde288f5311a56a937f0afbbb3aeb5",
        "deepseek-v3",
    ),
    (
        "b3f499bb4255f8ca19fccd664443283318f2fd2414d5e0b040fbdd0cc195d6c5",
        "deepseek-r1-qwen",
    ),
    (
        "ccc2ef013c104be7bae2965776d611e1d7a8a2a9c547dd93a682c9a9fc80352e",
        "gpt-4o",
    ),
    (
        "7dec86086fcc38b66b7bc1575a160ae21cf705be7718b9d5598190d7c12db76f",
        "superbpe",
    ),
    (
        "1994ffd01900cfb37395608534236ecd63f2bd5995d6cb1004dda1af50240f15",
        "trillion",
    ),
    (
        "96a5f08be6259352137b512d4157e333e21df7edd3fcd152990608735a65b224",
        "bailingmoe",
    ),
    (
        "d353350c764d8c3b39c763113960e4fb4919bea5fbf208a0e3b22e8469dc7406",
        "llama4",
    ),
    (
        "0e9433cbbb161f89e264eb32e8e64bfe69e834973ffca5d41d3948a604a3e2a3",
        "pixtral",
    ),
    (
        "d5f1dd6f980fec569fb218a81a7658ac45fc56b38c5a0adeb1c232fbe04ef5ec",
        "seed-coder",
    ),
    (
        "b0a6b1c0bd5998ebd9df08611efde34a4ff03faed45ae09c43e6b31ebd4b94cf",
        "a.x-4.0",
    ),
    (
        "f6791d196f87ce6b56a7d234be618e0d58f8cda3549416635b2bebcd22cd95c4",
        "midm-2.0",
    ),
    (
        "169bf0296a13c4d9b7672313f749eb36501d931022de052aad6e36f2bf34dd51",
        "lfm2",
    ),
    (
        "2085e1638f6c377a0aa4ead21b27bb4cb941bf800df86ed391011769c1758dfb",
        "exaone4",
    ),
    (
        "a1e163ecab2e718a4c829d1148b6e86824ec36163bb71941c3dca9cd5ac25756",
        "mellum",
    ),
    (
        "49fc0303c9e0d2c2c565c510f64b2d9b271276acdcdadff733249eda9f7d59df",
        "afmoe",
    ),
    (
        "9b1be57e70d20d9501b2b3186e792d81181ae36ada3903c26f9fea418cf87206",
        "bailingmoe2",
    ),
    (
        "53e325976a6e142379c19b09afcae354f2f496f147afa8f9e189a33fe4e3024e",
        "granite-docling",
    ),
    (
        "f4f37b6c8eb9ea29b3eac6bb8c8487c5ab7885f8d8022e67edc1c68ce8403e95",
        "minimax-m2",
    ),
    (
        "4a2e2abae11ca2b86d570fc5b44be4d5eb5e72cc8f22dd136a94b37da83ab665",
        "kormo",
    ),
    (
        "9d70134b369a70e5735009b6de918f7581b5211f7c074d1f89f753aea8248af1",
        "youtu",
    ),
    (
        "16389f0a1f51ee53e562ffd51c371dc508639ab0e4261502071836e50e223e91",
        "solar-open",
    ),
    (
        "6c81ce329e0802883b22eabab0d3fa48357337ef1ecb45443828bf1f6254833f",
        "exaone-moe",
    ),
    (
        "d30d75d9059f1aa2c19359de71047b3ae408c70875e8a3ccf8c5fba56c9d8af4",
        "qwen35",
    ),
    (
        "1444df51289cfa8063b96f0e62b1125440111bc79a52003ea14b6eac7016fd5f",
        "qwen35",
    ),
    (
        "6990f1358c92b6cef7c08ef650117ed3617d123618eaac0fc8e0be73a880aa52",
        "kimi-k25",
    ),
];

/// Recognises the pre-tokenizer of `tokenizer_json`, or explains why it cannot.
pub fn recognise(tokenizer_json: &Value) -> GgufResult<String> {
    let digest =
        check_digest(tokenizer_json).map_err(|reason| GgufError::UnknownPreTokenizer { reason })?;
    KNOWN
        .iter()
        .find(|(d, _)| *d == digest)
        .map(|(_, name)| name.to_string())
        .ok_or_else(|| GgufError::UnknownPreTokenizer {
            reason: format!(
                "the check-text digest {digest} is not in llama.cpp's table of known tokenizers"
            ),
        })
}

/// The ids the HF tokenizer described by `tokenizer_json` gives the check text (special
/// tokens added).
pub fn check_ids(tokenizer_json: &Value) -> Result<Vec<u32>, String> {
    Encoder::new(tokenizer_json)?.encode(CHECK_TEXT)
}

/// The converter's digest: SHA-256 of the Python-printed ids of the check text.
pub fn check_digest(tokenizer_json: &Value) -> Result<String, String> {
    let ids = check_ids(tokenizer_json)?;
    let printed = format!(
        "[{}]",
        ids.iter()
            .map(u32::to_string)
            .collect::<Vec<_>>()
            .join(", ")
    );
    Ok(Sha256::digest(printed.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect())
}

// ---------------------------------------------------------------------------------------------
// Unicode classes (exact for the check text's characters; see the module doc)

fn is_mark(c: char) -> bool {
    matches!(c as u32,
        0x0300..=0x036F | 0x0483..=0x0489 | 0x0591..=0x05BD | 0x05BF | 0x05C1..=0x05C2
        | 0x05C4..=0x05C5 | 0x05C7 | 0x0610..=0x061A | 0x064B..=0x065F | 0x0670
        | 0x06D6..=0x06DC | 0x06DF..=0x06E4 | 0x06E7..=0x06E8 | 0x06EA..=0x06ED
        | 0x0900..=0x0903 | 0x093A..=0x093C | 0x093E..=0x094F | 0x0951..=0x0957
        | 0x0962..=0x0963 | 0x0981..=0x0983 | 0x09BC | 0x09BE..=0x09CD | 0x0E31 | 0x0E34..=0x0E3A
        | 0x0E47..=0x0E4E | 0x17B4..=0x17D3 | 0x17DD | 0x1AB0..=0x1AFF | 0x1DC0..=0x1DFF
        | 0x20D0..=0x20FF | 0x302A..=0x302F | 0x3099..=0x309A | 0xFE00..=0xFE0F | 0xFE20..=0xFE2F
        | 0xE0100..=0xE01EF)
}

fn is_format(c: char) -> bool {
    matches!(c as u32, 0x00AD | 0x200B..=0x200F | 0x202A..=0x202E | 0x2060..=0x2064 | 0xFEFF)
}

fn is_letter(c: char) -> bool {
    c.is_alphabetic()
        && !is_mark(c)
        && !matches!(c as u32, 0x16EE..=0x16F0 | 0x2160..=0x2188 | 0x3007 | 0x3021..=0x3029)
}

fn is_number(c: char) -> bool {
    c.is_numeric()
}

fn is_punct(c: char) -> bool {
    if c.is_ascii() {
        return c.is_ascii_punctuation() && !"$+<=>^`|~".contains(c);
    }
    matches!(c as u32,
        0x00A1 | 0x00A7 | 0x00AB | 0x00B6..=0x00B7 | 0x00BB | 0x00BF | 0x2010..=0x2027
        | 0x2030..=0x2043 | 0x2045..=0x2051 | 0x2053..=0x205E | 0x3001..=0x3003
        | 0x3008..=0x3011 | 0x3014..=0x301F | 0xFF01..=0xFF03 | 0xFF05..=0xFF0A
        | 0xFF0C..=0xFF0F | 0xFF1A..=0xFF1B | 0xFF1F..=0xFF20 | 0xFF3B..=0xFF3D | 0xFF3F
        | 0xFF5B | 0xFF5D)
}

fn is_symbol(c: char) -> bool {
    if c.is_ascii() {
        return "$+<=>^`|~".contains(c);
    }
    !c.is_whitespace()
        && !c.is_control()
        && !is_letter(c)
        && !is_number(c)
        && !is_mark(c)
        && !is_format(c)
        && !is_punct(c)
        && !c.is_alphabetic()
}

// ---------------------------------------------------------------------------------------------
// A small backtracking regex matcher for HF pre-tokenizer patterns.

#[derive(Debug, Clone)]
enum Item {
    Char(char),
    Any,
    Digit,
    Space,
    Word,
    Letter,
    Number,
    Mark,
    Punct,
    Symbol,
    Range(char, char),
}

#[derive(Debug, Clone)]
enum Node {
    /// Match one char against items (negated if the bool is set); case-insensitive flag.
    Class(Vec<Item>, bool, bool),
    Seq(Vec<Node>),
    Alt(Vec<Node>),
    Repeat(Box<Node>, usize, Option<usize>),
    Look(Box<Node>, bool),
}

fn item_matches(it: &Item, c: char, ci: bool) -> bool {
    match *it {
        Item::Char(x) => x == c || (ci && x.to_lowercase().eq(c.to_lowercase())),
        Item::Any => c != '\n',
        Item::Digit => is_number(c),
        Item::Space => c.is_whitespace(),
        Item::Word => c.is_alphanumeric() || c == '_' || is_mark(c),
        Item::Letter => is_letter(c),
        Item::Number => is_number(c),
        Item::Mark => is_mark(c),
        Item::Punct => is_punct(c),
        Item::Symbol => is_symbol(c),
        Item::Range(a, b) => a <= c && c <= b,
    }
}

struct Parser<'a> {
    s: Vec<char>,
    i: usize,
    pat: &'a str,
}

impl Parser<'_> {
    fn err<T>(&self, what: &str) -> Result<T, String> {
        Err(format!("regex `{}`: {what} at {}", self.pat, self.i))
    }

    fn peek(&self) -> Option<char> {
        self.s.get(self.i).copied()
    }

    fn alt(&mut self, ci: bool) -> Result<Node, String> {
        let mut alts = vec![self.seq(ci)?];
        while self.peek() == Some('|') {
            self.i += 1;
            alts.push(self.seq(ci)?);
        }
        Ok(if alts.len() == 1 {
            alts.pop().expect("one")
        } else {
            Node::Alt(alts)
        })
    }

    fn seq(&mut self, ci: bool) -> Result<Node, String> {
        let mut items = Vec::new();
        while let Some(c) = self.peek() {
            if c == '|' || c == ')' {
                break;
            }
            let atom = self.atom(ci)?;
            let atom = self.quant(atom)?;
            items.push(atom);
        }
        Ok(Node::Seq(items))
    }

    fn quant(&mut self, atom: Node) -> Result<Node, String> {
        let (min, max) = match self.peek() {
            Some('?') => (0, Some(1)),
            Some('*') => (0, None),
            Some('+') => (1, None),
            Some('{') => {
                let start = self.i;
                let close = self.s[self.i..]
                    .iter()
                    .position(|&c| c == '}')
                    .map(|p| p + self.i);
                let Some(close) = close else {
                    return self.err("unclosed {");
                };
                let body: String = self.s[start + 1..close].iter().collect();
                let (a, b) = match body.split_once(',') {
                    Some((a, b)) => (a.trim().to_string(), Some(b.trim().to_string())),
                    None => (body.trim().to_string(), None),
                };
                let min: usize = a.parse().map_err(|_| "bad {m,n}".to_string())?;
                let max = match b {
                    None => Some(min),
                    Some(b) if b.is_empty() => None,
                    Some(b) => Some(b.parse().map_err(|_| "bad {m,n}".to_string())?),
                };
                self.i = close;
                (min, max)
            }
            _ => return Ok(atom),
        };
        self.i += 1;
        if matches!(self.peek(), Some('?') | Some('+')) {
            return self.err("lazy/possessive quantifiers are not supported");
        }
        Ok(Node::Repeat(Box::new(atom), min, max))
    }

    fn escape(&mut self) -> Result<Item, String> {
        let Some(c) = self.peek() else {
            return self.err("trailing backslash");
        };
        self.i += 1;
        Ok(match c {
            'n' => Item::Char('\n'),
            'r' => Item::Char('\r'),
            't' => Item::Char('\t'),
            'f' => Item::Char('\u{c}'),
            'v' => Item::Char('\u{b}'),
            's' => Item::Space,
            'd' => Item::Digit,
            'w' => Item::Word,
            'p' => {
                let name: String = if self.peek() == Some('{') {
                    let close = self.s[self.i..]
                        .iter()
                        .position(|&c| c == '}')
                        .map(|p| p + self.i);
                    let Some(close) = close else {
                        return self.err("unclosed \\p{");
                    };
                    let n = self.s[self.i + 1..close].iter().collect();
                    self.i = close + 1;
                    n
                } else {
                    let n = self.peek().map(String::from).unwrap_or_default();
                    self.i += 1;
                    n
                };
                match name.as_str() {
                    "L" | "Letter" => Item::Letter,
                    "N" | "Number" => Item::Number,
                    "M" | "Mark" => Item::Mark,
                    "P" | "Punctuation" => Item::Punct,
                    "S" | "Symbol" => Item::Symbol,
                    _ => return self.err(&format!("unsupported class \\p{{{name}}}")),
                }
            }
            'S' | 'D' | 'W' | 'P' => return self.err("negated escape outside a class"),
            c if c.is_ascii_alphanumeric() => {
                return self.err(&format!("unsupported escape \\{c}"));
            }
            c => Item::Char(c),
        })
    }

    fn atom(&mut self, ci: bool) -> Result<Node, String> {
        let c = self.peek().expect("caller checked");
        self.i += 1;
        match c {
            '(' => {
                let mut ci = ci;
                let mut look = None;
                if self.peek() == Some('?') {
                    self.i += 1;
                    match self.peek() {
                        Some(':') => self.i += 1,
                        Some('i') if self.s.get(self.i + 1) == Some(&':') => {
                            ci = true;
                            self.i += 2;
                        }
                        Some('=') => {
                            self.i += 1;
                            look = Some(false);
                        }
                        Some('!') => {
                            self.i += 1;
                            look = Some(true);
                        }
                        _ => return self.err("unsupported group"),
                    }
                }
                let inner = self.alt(ci)?;
                if self.peek() != Some(')') {
                    return self.err("unclosed group");
                }
                self.i += 1;
                Ok(match look {
                    Some(neg) => Node::Look(Box::new(inner), neg),
                    None => inner,
                })
            }
            '[' => {
                let mut neg = false;
                if self.peek() == Some('^') {
                    neg = true;
                    self.i += 1;
                }
                let mut items = Vec::new();
                let mut first = true;
                loop {
                    let Some(c) = self.peek() else {
                        return self.err("unclosed class");
                    };
                    if c == ']' && !first {
                        self.i += 1;
                        break;
                    }
                    first = false;
                    self.i += 1;
                    let item = if c == '\\' {
                        match self.peek() {
                            Some('S') | Some('D') | Some('W') | Some('P') => {
                                return self.err("negated escape inside a class");
                            }
                            _ => self.escape()?,
                        }
                    } else if c == '[' {
                        return self.err("nested classes are not supported");
                    } else {
                        Item::Char(c)
                    };
                    if let Item::Char(lo) = item
                        && self.peek() == Some('-')
                        && self.s.get(self.i + 1).is_some_and(|&n| n != ']')
                    {
                        self.i += 1;
                        let hc = self.peek().expect("checked");
                        self.i += 1;
                        let hi = if hc == '\\' {
                            match self.escape()? {
                                Item::Char(h) => h,
                                _ => return self.err("bad range"),
                            }
                        } else {
                            hc
                        };
                        items.push(Item::Range(lo, hi));
                    } else {
                        items.push(item);
                    }
                }
                Ok(Node::Class(items, neg, ci))
            }
            '.' => Ok(Node::Class(vec![Item::Any], false, ci)),
            '\\' => {
                let neg = matches!(self.peek(), Some('S') | Some('D') | Some('W') | Some('P'));
                if neg {
                    let c = self.peek().expect("checked");
                    self.s[self.i] = c.to_ascii_lowercase();
                }
                let it = self.escape()?;
                Ok(Node::Class(vec![it], neg, ci))
            }
            '^' | '$' => self.err("anchors are not supported"),
            c => Ok(Node::Class(vec![Item::Char(c)], false, ci)),
        }
    }
}

/// A compiled pattern.
#[derive(Debug, Clone)]
pub struct Regex {
    root: Node,
}

impl Regex {
    /// Compiles the supported subset.
    pub fn new(pat: &str) -> Result<Regex, String> {
        let mut p = Parser {
            s: pat.chars().collect(),
            i: 0,
            pat,
        };
        let root = p.alt(false)?;
        if p.i != p.s.len() {
            return p.err("unbalanced )");
        }
        Ok(Regex { root })
    }

    fn m(node: &Node, s: &[char], i: usize, k: &mut dyn FnMut(usize) -> bool) -> bool {
        match node {
            Node::Class(items, neg, ci) => match s.get(i) {
                Some(&c) if items.iter().any(|it| item_matches(it, c, *ci)) != *neg => k(i + 1),
                _ => false,
            },
            Node::Seq(items) => Self::seq(items, s, i, k),
            Node::Alt(alts) => alts.iter().any(|a| Self::m(a, s, i, k)),
            Node::Repeat(inner, min, max) => Self::rep(inner, *min, *max, 0, s, i, k),
            Node::Look(inner, neg) => {
                let found = Self::m(inner, s, i, &mut |_| true);
                if found != *neg { k(i) } else { false }
            }
        }
    }

    fn seq(items: &[Node], s: &[char], i: usize, k: &mut dyn FnMut(usize) -> bool) -> bool {
        match items.split_first() {
            None => k(i),
            Some((first, rest)) => Self::m(first, s, i, &mut |j| Self::seq(rest, s, j, k)),
        }
    }

    fn rep(
        inner: &Node,
        min: usize,
        max: Option<usize>,
        count: usize,
        s: &[char],
        i: usize,
        k: &mut dyn FnMut(usize) -> bool,
    ) -> bool {
        if max.is_none_or(|m| count < m)
            && Self::m(inner, s, i, &mut |j| {
                j > i && Self::rep(inner, min, max, count + 1, s, j, k)
            })
        {
            return true;
        }
        count >= min && k(i)
    }

    /// Non-overlapping leftmost matches, as (start, end) char indices.
    pub fn find_iter(&self, s: &[char]) -> Vec<(usize, usize)> {
        let mut out = Vec::new();
        let mut i = 0;
        while i < s.len() {
            let mut end = None;
            Self::m(&self.root, s, i, &mut |j| {
                end = Some(j);
                true
            });
            match end {
                Some(e) if e > i => {
                    out.push((i, e));
                    i = e;
                }
                _ => i += 1,
            }
        }
        out
    }
}

// ---------------------------------------------------------------------------------------------
// The tokenizer.json pipeline.

const GPT2_PATTERN: &str =
    r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+";

/// GPT-2's byte → printable-char map.
fn byte_chars() -> [char; 256] {
    let mut map = ['\0'; 256];
    let mut n = 0u32;
    for b in 0..256u32 {
        let printable =
            (0x21..=0x7E).contains(&b) || (0xA1..=0xAC).contains(&b) || (0xAE..=0xFF).contains(&b);
        map[b as usize] = if printable {
            char::from_u32(b).expect("latin-1")
        } else {
            n += 1;
            char::from_u32(255 + n).expect("valid")
        };
    }
    map
}

enum Pre {
    ByteLevel {
        prefix_space: bool,
        regex: Option<Regex>,
    },
    Split(Regex),
    Digits(bool),
}

struct Encoder {
    normalizers: Vec<String>,
    pre: Vec<Pre>,
    vocab: HashMap<String, u32>,
    ranks: HashMap<(String, String), usize>,
    ignore_merges: bool,
    unk: Option<u32>,
    added: Vec<(String, u32)>,
    post: Vec<Value>,
    special_ids: HashMap<String, Vec<u32>>,
    bytes: [char; 256],
}

impl Encoder {
    fn new(tj: &Value) -> Result<Encoder, String> {
        let model = tj.get("model").ok_or("no `model`")?;
        if model.get("type").and_then(Value::as_str) != Some("BPE") {
            return Err("the tokenizer model is not BPE".into());
        }
        for k in ["continuing_subword_prefix", "end_of_word_suffix"] {
            if model.get(k).is_some_and(|v| !v.is_null() && v != "") {
                return Err(format!("BPE `{k}` is not supported"));
            }
        }
        let vocab: HashMap<String, u32> = model
            .get("vocab")
            .and_then(Value::as_object)
            .ok_or("no `model.vocab`")?
            .iter()
            .filter_map(|(k, v)| v.as_u64().map(|id| (k.clone(), id as u32)))
            .collect();
        let mut ranks = HashMap::new();
        for (r, m) in model
            .get("merges")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .enumerate()
        {
            let pair = match m {
                Value::String(s) => s
                    .split_once(' ')
                    .map(|(a, b)| (a.to_string(), b.to_string())),
                Value::Array(p) if p.len() == 2 => match (p[0].as_str(), p[1].as_str()) {
                    (Some(a), Some(b)) => Some((a.to_string(), b.to_string())),
                    _ => None,
                },
                _ => None,
            };
            let pair = pair.ok_or("malformed merge")?;
            ranks.entry(pair).or_insert(r);
        }
        let unk = model
            .get("unk_token")
            .and_then(Value::as_str)
            .and_then(|u| vocab.get(u).copied());
        let normalizers = flatten(tj.get("normalizer"), "normalizers")
            .into_iter()
            .map(|n| {
                let t = n.get("type").and_then(Value::as_str).unwrap_or("");
                match t {
                    "NFC" | "NFKC" | "Lowercase" => Ok(t.to_string()),
                    other => Err(format!("normalizer `{other}` is not supported")),
                }
            })
            .collect::<Result<Vec<_>, _>>()?;
        let mut pre = Vec::new();
        for p in flatten(tj.get("pre_tokenizer"), "pretokenizers") {
            let t = p.get("type").and_then(Value::as_str).unwrap_or("");
            match t {
                "ByteLevel" => {
                    let use_regex = p.get("use_regex").and_then(Value::as_bool).unwrap_or(true);
                    pre.push(Pre::ByteLevel {
                        prefix_space: p
                            .get("add_prefix_space")
                            .and_then(Value::as_bool)
                            .unwrap_or(false),
                        regex: if use_regex {
                            Some(Regex::new(GPT2_PATTERN)?)
                        } else {
                            None
                        },
                    });
                }
                "Split" => {
                    let pat = p
                        .get("pattern")
                        .and_then(|x| x.get("Regex").or_else(|| x.get("String")))
                        .and_then(Value::as_str)
                        .ok_or("Split without a pattern")?;
                    let is_regex = p.get("pattern").and_then(|x| x.get("Regex")).is_some();
                    if p.get("behavior").and_then(Value::as_str) != Some("Isolated")
                        || p.get("invert").and_then(Value::as_bool).unwrap_or(false)
                    {
                        return Err("only Split with behavior Isolated is supported".into());
                    }
                    let re = if is_regex {
                        Regex::new(pat)?
                    } else {
                        let escaped: String = pat
                            .chars()
                            .map(|c| {
                                if c.is_alphanumeric() {
                                    c.to_string()
                                } else {
                                    format!("\\{c}")
                                }
                            })
                            .collect();
                        Regex::new(&escaped)?
                    };
                    pre.push(Pre::Split(re));
                }
                "Digits" => pre.push(Pre::Digits(
                    p.get("individual_digits")
                        .and_then(Value::as_bool)
                        .unwrap_or(false),
                )),
                other => return Err(format!("pre-tokenizer `{other}` is not supported")),
            }
        }
        if !pre.iter().any(|p| matches!(p, Pre::ByteLevel { .. })) {
            return Err("the pre-tokenizer has no ByteLevel step".into());
        }
        let added = tj
            .get("added_tokens")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter_map(|a| {
                Some((
                    a.get("content")?.as_str()?.to_string(),
                    a.get("id")?.as_u64()? as u32,
                ))
            })
            .filter(|(c, _)| !c.is_empty())
            .collect();
        let post = flatten(tj.get("post_processor"), "processors");
        let mut special_ids = HashMap::new();
        for p in &post {
            if let Some(map) = p.get("special_tokens").and_then(Value::as_object) {
                for (k, v) in map {
                    let ids = v
                        .get("ids")
                        .and_then(Value::as_array)
                        .map(|a| {
                            a.iter()
                                .filter_map(|x| x.as_u64().map(|n| n as u32))
                                .collect()
                        })
                        .unwrap_or_default();
                    special_ids.insert(k.clone(), ids);
                }
            }
        }
        Ok(Encoder {
            normalizers,
            pre,
            vocab,
            ranks,
            ignore_merges: model
                .get("ignore_merges")
                .and_then(Value::as_bool)
                .unwrap_or(false),
            unk,
            added,
            post,
            special_ids,
            bytes: byte_chars(),
        })
    }

    fn normalize(&self, s: &str) -> String {
        let mut out = s.to_string();
        for n in &self.normalizers {
            out = match n.as_str() {
                // The check text is NFC already; NFKC only changes its fullwidth tilde.
                "NFC" => out,
                "NFKC" => out
                    .chars()
                    .map(|c| match c as u32 {
                        0xFF01..=0xFF5E => char::from_u32(c as u32 - 0xFF01 + 0x21).expect("ascii"),
                        0x3000 => ' ',
                        _ => c,
                    })
                    .collect(),
                _ => out.to_lowercase(),
            };
        }
        out
    }

    fn pre_tokenize(&self, text: &str) -> Vec<String> {
        let mut pieces: Vec<String> = vec![text.to_string()];
        for p in &self.pre {
            let mut next = Vec::new();
            for piece in pieces {
                match p {
                    Pre::ByteLevel {
                        prefix_space,
                        regex,
                    } => {
                        let piece = if *prefix_space && !piece.starts_with(' ') {
                            format!(" {piece}")
                        } else {
                            piece
                        };
                        let parts = match regex {
                            Some(re) => split_isolated(re, &piece),
                            None => vec![piece],
                        };
                        for part in parts {
                            next.push(part.bytes().map(|b| self.bytes[b as usize]).collect());
                        }
                    }
                    Pre::Split(re) => next.extend(split_isolated(re, &piece)),
                    Pre::Digits(individual) => {
                        let chars: Vec<char> = piece.chars().collect();
                        let mut cur = String::new();
                        let mut cur_digit = None;
                        for c in chars {
                            let d = c.is_numeric();
                            if !cur.is_empty() && (Some(d) != cur_digit || (d && *individual)) {
                                next.push(std::mem::take(&mut cur));
                            }
                            cur.push(c);
                            cur_digit = Some(d);
                        }
                        if !cur.is_empty() {
                            next.push(cur);
                        }
                    }
                }
            }
            pieces = next;
        }
        pieces
    }

    fn bpe(&self, word: &str, out: &mut Vec<u32>) -> Result<(), String> {
        if self.ignore_merges
            && let Some(&id) = self.vocab.get(word)
        {
            out.push(id);
            return Ok(());
        }
        let mut syms: Vec<String> = word.chars().map(String::from).collect();
        loop {
            let mut best: Option<(usize, usize)> = None;
            for i in 0..syms.len().saturating_sub(1) {
                if let Some(&r) = self.ranks.get(&(syms[i].clone(), syms[i + 1].clone()))
                    && best.is_none_or(|(br, _)| r < br)
                {
                    best = Some((r, i));
                }
            }
            let Some((_, i)) = best else { break };
            let merged = format!("{}{}", syms[i], syms[i + 1]);
            syms[i] = merged;
            syms.remove(i + 1);
        }
        for s in syms {
            match self.vocab.get(&s).copied().or(self.unk) {
                Some(id) => out.push(id),
                None => {
                    return Err(format!(
                        "symbol `{s}` is not in the vocabulary and there is no unk token"
                    ));
                }
            }
        }
        Ok(())
    }

    fn encode(&self, text: &str) -> Result<Vec<u32>, String> {
        // Split on added tokens (longest match first), then run the pipeline on the rest.
        let mut ids = Vec::new();
        let mut segment_start = 0;
        let bytes = text.as_bytes();
        let mut i = 0;
        while i < bytes.len() {
            let hit = self
                .added
                .iter()
                .filter(|(c, _)| text[i..].starts_with(c.as_str()))
                .max_by_key(|(c, _)| c.len());
            if let Some((c, id)) = hit {
                self.encode_plain(&text[segment_start..i], &mut ids)?;
                ids.push(*id);
                i += c.len();
                segment_start = i;
            } else {
                i += text[i..].chars().next().map_or(1, char::len_utf8);
            }
        }
        self.encode_plain(&text[segment_start..], &mut ids)?;
        self.post_process(ids)
    }

    fn encode_plain(&self, text: &str, ids: &mut Vec<u32>) -> Result<(), String> {
        if text.is_empty() {
            return Ok(());
        }
        let norm = self.normalize(text);
        for piece in self.pre_tokenize(&norm) {
            if !piece.is_empty() {
                self.bpe(&piece, ids)?;
            }
        }
        Ok(())
    }

    fn post_process(&self, ids: Vec<u32>) -> Result<Vec<u32>, String> {
        let mut ids = ids;
        for p in &self.post {
            let t = p.get("type").and_then(Value::as_str).unwrap_or("");
            ids = match t {
                "ByteLevel" => ids,
                "TemplateProcessing" => {
                    let mut out = Vec::new();
                    for item in p
                        .get("single")
                        .and_then(Value::as_array)
                        .into_iter()
                        .flatten()
                    {
                        if let Some(sp) = item.get("SpecialToken") {
                            let key = sp.get("id").and_then(Value::as_str).unwrap_or("");
                            let sids = self
                                .special_ids
                                .get(key)
                                .ok_or_else(|| format!("template token `{key}` has no ids"))?;
                            out.extend(sids);
                        } else if item.get("Sequence").is_some() {
                            out.extend(&ids);
                        }
                    }
                    out
                }
                "RobertaProcessing" | "BertProcessing" => {
                    let id = |k: &str| -> Result<u32, String> {
                        p.get(k)
                            .and_then(Value::as_array)
                            .and_then(|a| a.get(1))
                            .and_then(Value::as_u64)
                            .map(|n| n as u32)
                            .ok_or_else(|| format!("{t} without `{k}`"))
                    };
                    let mut out = vec![id("cls")?];
                    out.extend(&ids);
                    out.push(id("sep")?);
                    out
                }
                other => return Err(format!("post-processor `{other}` is not supported")),
            };
        }
        Ok(ids)
    }
}

fn flatten(v: Option<&Value>, list_key: &str) -> Vec<Value> {
    match v {
        None | Some(Value::Null) => Vec::new(),
        Some(v) if v.get("type").and_then(Value::as_str) == Some("Sequence") => v
            .get(list_key)
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .flat_map(|x| flatten(Some(x), list_key))
            .collect(),
        Some(v) => vec![v.clone()],
    }
}

/// Splits `s` into regex matches and the gaps between them (HF `Isolated` behaviour).
fn split_isolated(re: &Regex, s: &str) -> Vec<String> {
    let chars: Vec<char> = s.chars().collect();
    let mut out = Vec::new();
    let mut last = 0;
    for (a, b) in re.find_iter(&chars) {
        if a > last {
            out.push(chars[last..a].iter().collect());
        }
        out.push(chars[a..b].iter().collect());
        last = b;
    }
    if last < chars.len() {
        out.push(chars[last..].iter().collect());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pieces(pat: &str, s: &str) -> Vec<String> {
        split_isolated(&Regex::new(pat).unwrap(), s)
    }

    #[test]
    fn gpt2_regex_behaviour() {
        // Hand-worked with the GPT-2 pattern: contractions, optional leading space, runs,
        // whitespace followed by a word keeps its last space for the word.
        assert_eq!(
            pieces(GPT2_PATTERN, "I've  got 33 apples!!"),
            vec!["I", "'ve", " ", " got", " 33", " apples", "!!"]
        );
        assert_eq!(pieces(GPT2_PATTERN, "a \n\n b"), vec!["a", " \n\n", " b"]);
    }

    #[test]
    fn llama3_regex_behaviour() {
        let p = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
        assert_eq!(
            pieces(p, "We'VE 12345 x\n\ny"),
            vec!["We", "'VE", " ", "123", "45", " x", "\n\n", "y"]
        );
    }

    #[test]
    fn unsupported_patterns_are_errors() {
        assert!(Regex::new(r"\p{Han}+").is_err());
        assert!(Regex::new(r"a+?").is_err());
        assert!(Regex::new(r"(a").is_err());
    }

    #[test]
    fn check_text_is_the_converters() {
        // sha256 of the chktxt literal copied from convert_hf_to_gguf.py (fixture chk.py)
        let d: String = Sha256::digest(CHECK_TEXT.as_bytes())
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        assert_eq!(
            d,
            "a36179c1e2b1cfcfbfad1dc779addad2ffc778201e4cf0d538bddeafa2c526da"
        );
        assert_eq!(CHECK_TEXT.chars().count(), 350);
    }

    #[test]
    fn khmer_marks_are_not_letters() {
        assert!(is_letter('\u{1780}'));
        assert!(!is_letter('\u{17b6}'));
        assert!(is_mark('\u{fe0f}'));
        assert!(is_symbol('\u{ff5e}'));
        assert!(is_symbol('\u{1f680}'));
        assert!(!is_symbol('\u{200d}'));
    }
}
