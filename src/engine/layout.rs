//! Tensor layout: one flat buffer, tensors back to back in creation order.
//!
//! There is no padding between tensors so that the concatenated gradient of the C
//! API maps onto the accumulator one to one, and accumulation is a single flat pass.
//! Weight decay is a per-tensor property; backends see it as "decay runs": maximal
//! ranges of consecutive elements that share the flag, so a step needs no per-tensor
//! launches.

use crate::status::{Error, Result};

/// One tensor as the engine keeps it.
#[derive(Clone, Debug, PartialEq)]
pub struct TensorInfo {
    pub name: Option<String>,
    pub offset: usize,
    pub numel: usize,
    pub decay: bool,
}

/// A maximal run of elements that share the weight-decay flag.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DecayRun {
    pub start: usize,
    pub end: usize,
    pub decay: bool,
}

/// The whole layout.
#[derive(Clone, Debug, PartialEq)]
pub struct Layout {
    pub tensors: Vec<TensorInfo>,
    pub numel: usize,
    pub runs: Vec<DecayRun>,
}

/// Largest total element count accepted: every per-element buffer (five of them at
/// most, 4 bytes each) must stay addressable.
pub(crate) const MAX_TOTAL_NUMEL: usize = (isize::MAX as usize) / 32;

impl Layout {
    /// Builds the layout from (name, numel, decay) triples, validating sizes.
    pub fn new(specs: Vec<(Option<String>, usize, bool)>) -> Result<Layout> {
        if specs.is_empty() {
            return Err(Error::invalid_argument("n_tensors must be >= 1"));
        }
        let mut tensors = Vec::with_capacity(specs.len());
        let mut offset = 0usize;
        for (index, (name, numel, decay)) in specs.into_iter().enumerate() {
            if numel == 0 {
                return Err(Error::invalid_argument(format!("tensors[{index}].numel must be > 0")));
            }
            let end = offset.checked_add(numel).filter(|&end| end <= MAX_TOTAL_NUMEL).ok_or_else(|| {
                Error::invalid_argument(format!(
                    "tensors[{index}].numel: the total element count exceeds {MAX_TOTAL_NUMEL}"
                ))
            })?;
            tensors.push(TensorInfo { name, offset, numel, decay });
            offset = end;
        }
        let runs = decay_runs(&tensors);
        Ok(Layout { tensors, numel: offset, runs })
    }
}

fn decay_runs(tensors: &[TensorInfo]) -> Vec<DecayRun> {
    let mut runs: Vec<DecayRun> = Vec::new();
    for t in tensors {
        match runs.last_mut() {
            Some(last) if last.decay == t.decay => last.end = t.offset + t.numel,
            _ => runs.push(DecayRun { start: t.offset, end: t.offset + t.numel, decay: t.decay }),
        }
    }
    runs
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn offsets_and_runs() {
        let l = Layout::new(vec![(None, 3, true), (Some("b".into()), 2, false), (None, 4, false), (None, 1, true)])
            .unwrap();
        assert_eq!(l.numel, 10);
        assert_eq!(l.tensors.iter().map(|t| t.offset).collect::<Vec<_>>(), vec![0, 3, 5, 9]);
        assert_eq!(
            l.runs,
            vec![
                DecayRun { start: 0, end: 3, decay: true },
                DecayRun { start: 3, end: 9, decay: false },
                DecayRun { start: 9, end: 10, decay: true },
            ]
        );
    }

    #[test]
    fn rejects_empty_and_zero_and_overflow() {
        assert!(Layout::new(vec![]).is_err());
        assert!(Layout::new(vec![(None, 0, true)]).unwrap_err().message.contains("tensors[0]"));
        let e = Layout::new(vec![(None, MAX_TOTAL_NUMEL, true), (None, 1, true)]).unwrap_err();
        assert!(e.message.contains("tensors[1]"));
    }
}
