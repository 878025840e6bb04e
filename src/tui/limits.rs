//! The sampling controls both terminal UIs offer: one set of limits and steps.

/// Highest temperature the keys (and the dashboard's `--sample-temperatures`) reach.
pub const TEMP_MAX: f32 = 5.0;
/// Temperature step of `t`/`T` in the generation UI.
pub const TEMP_STEP: f32 = 0.05;
/// Top-p step of `p`/`P`.
pub const TOP_P_STEP: f32 = 0.05;
/// Top-k values `k`/`K` step through (those below V), then "off".
pub const TOP_K_STEPS: &[usize] = &[1, 2, 3, 5, 10, 20, 40, 100, 200, 500, 1000, 5000];
