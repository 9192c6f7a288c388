//! The superpeer role of Natter: promotion policy, leaf admission, directory record validation
//! and relay limits. The overlay work fills this crate; until then it holds no code, so nothing
//! here pretends to work.
