//! The Anima module SDK (in progress).
