//! The one integration-test binary (one link step). Each module proves one capability.
