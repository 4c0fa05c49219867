//! Redis stream producer input (being written).
