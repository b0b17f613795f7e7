//! What tokens cost on a pool: the price list the router compares candidates by and the
//! tenants' spend and budgets are counted with.

/// Prices of a pool in dollars per million tokens (`pools.X.cost`).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Cost {
    pub input_per_mtok: f64,
    pub output_per_mtok: f64,
}

impl Cost {
    /// Micro-dollars for the given tokens (1 $/Mtok is one micro-dollar per token).
    pub fn micros(&self, prompt: u64, completion: u64) -> u64 {
        self.dollars_e6(prompt, completion).round() as u64
    }

    /// The same in micro-dollars, unrounded (comparisons of small requests).
    pub fn dollars_e6(&self, prompt: u64, completion: u64) -> f64 {
        prompt as f64 * self.input_per_mtok + completion as f64 * self.output_per_mtok
    }

    pub fn is_free(&self) -> bool {
        self.input_per_mtok == 0.0 && self.output_per_mtok == 0.0
    }

    /// Whether both prices are at most `max`'s (a request's `provider.max_price`).
    pub fn within(&self, max: &Cost) -> bool {
        self.input_per_mtok <= max.input_per_mtok && self.output_per_mtok <= max.output_per_mtok
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cost_in_micro_dollars() {
        let c = Cost {
            input_per_mtok: 0.10,
            output_per_mtok: 0.20,
        };
        assert_eq!(c.micros(1_000_000, 0), 100_000);
        assert_eq!(c.micros(30, 20), 7);
        assert!(Cost::default().is_free());
        let cap = Cost {
            input_per_mtok: 0.10,
            output_per_mtok: 0.15,
        };
        assert!(!c.within(&cap), "output over the cap");
        assert!(Cost::default().within(&cap));
    }
}
