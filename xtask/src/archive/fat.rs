//! FAT images (being written).
