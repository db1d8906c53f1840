//! The Anima Core engine and the `anima` command-line tool.
//!
//! The binary (`src/main.rs`) is thin: it parses the command line with
//! [`cli::Cli`] and calls [`cli::run`].

#![forbid(unsafe_code)]
#![deny(missing_docs)]

pub mod cli;
