//! A SentencePiece `tokenizer.model` protobuf, never a panic.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let _ = smelt_gguf::tokenizer::SpModel::parse(data);
});
