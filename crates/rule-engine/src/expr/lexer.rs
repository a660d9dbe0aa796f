//! Tokenizer for the expression language (to be written).
