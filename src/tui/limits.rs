//! The sampling controls both terminal UIs offer: one set of limits and steps.

/// Highest temperature the keys (and the dashboard's `--sample-temperatures`) reach.
pub const TEMP_MAX: f32 = 5.0;
/// Temperature step of `t`/`T` in the generation UI.
pub const TEMP_STEP: f32 = 0.05;
/// Top-p step of `p`/`P`.
pub const TOP_P_STEP: f32 = 0.05;
/// Top-k values `k`/`K` step through (those below V), then "off".
pub const TOP_K_STEPS: &[usize] = &[1, 2, 3, 5, 10, 20, 40, 100, 200, 500, 1000, 5000];
/// Min-p values `m`/`M` step through (below the first: off).
pub const MIN_P_STEPS: &[f32] = &[0.01, 0.02, 0.05, 0.1, 0.2, 0.3];
/// Repetition penalty step of `a`/`A`, from 1 (off) up to [`REPETITION_MAX`].
pub const REPETITION_STEP: f32 = 0.05;
/// Highest repetition penalty the keys reach.
pub const REPETITION_MAX: f32 = 2.0;
/// Frequency (`f`/`F`) and presence (`b`/`B`) penalty step, from 0 (off) up to
/// [`PENALTY_MAX`].
pub const PENALTY_STEP: f32 = 0.1;
/// Highest frequency or presence penalty the keys reach (OpenAI's limit).
pub const PENALTY_MAX: f32 = 2.0;
