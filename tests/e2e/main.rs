//! placeholder until the e2e suite lands
