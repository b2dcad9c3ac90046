//! PE images (being written).
