//! Figures of a bench run: samples, their median, min and max, the ratio to
//! a baseline measured in the same run, targets, and the table and JSON
//! renderings.

use serde_json::{json, Map, Value};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unit {
    Seconds,
    NsPerOp,
    Bytes,
    Count,
}

impl Unit {
    fn name(self) -> &'static str {
        match self {
            Unit::Seconds => "s",
            Unit::NsPerOp => "ns/op",
            Unit::Bytes => "bytes",
            Unit::Count => "count",
        }
    }

    fn show(self, v: f64) -> String {
        match self {
            Unit::Seconds if v < 1e-3 => format!("{:.1} µs", v * 1e6),
            Unit::Seconds if v < 1.0 => format!("{:.2} ms", v * 1e3),
            Unit::Seconds => format!("{v:.3} s"),
            Unit::NsPerOp => format!("{v:.1} ns"),
            Unit::Bytes if v < 1024.0 * 1024.0 => format!("{:.1} KiB", v / 1024.0),
            Unit::Bytes => format!("{:.1} MiB", v / (1024.0 * 1024.0)),
            Unit::Count => format!("{v:.0}"),
        }
    }
}

/// What a figure should reach (stated for N = 1,000,000 and f = 1%).
#[derive(Debug, Clone)]
pub struct Target {
    pub text: &'static str,
    /// The median over the baseline's median must be at most this.
    pub max_ratio: Option<f64>,
    /// The median must be at most this, in the figure's unit.
    pub max_abs: Option<f64>,
    /// The median over the figure's `per` count must be at most this.
    pub max_per: Option<f64>,
}

#[derive(Debug, Clone)]
pub struct Figure {
    pub key: &'static str,
    pub label: &'static str,
    pub unit: Unit,
    pub samples: Vec<f64>,
    /// Key of the figure this one is compared with.
    pub baseline: Option<&'static str>,
    pub target: Option<Target>,
    /// Shown beside the median in the table: the median divided by this
    /// count, per the named thing (`record`, `changed record`).
    pub per: Option<(f64, &'static str)>,
}

impl Figure {
    pub fn new(key: &'static str, label: &'static str, unit: Unit, samples: Vec<f64>) -> Self {
        Figure {
            key,
            label,
            unit,
            samples,
            baseline: None,
            target: None,
            per: None,
        }
    }

    pub fn per(mut self, count: f64, what: &'static str) -> Self {
        self.per = Some((count, what));
        self
    }

    pub fn vs(mut self, baseline: &'static str) -> Self {
        self.baseline = Some(baseline);
        self
    }

    pub fn target(
        mut self,
        text: &'static str,
        max_ratio: Option<f64>,
        max_abs: Option<f64>,
    ) -> Self {
        self.target = Some(Target {
            text,
            max_ratio,
            max_abs,
            max_per: None,
        });
        self
    }

    /// A target on the median per `per` count (bytes per record).
    pub fn target_per(mut self, text: &'static str, max_per: f64) -> Self {
        self.target = Some(Target {
            text,
            max_ratio: None,
            max_abs: None,
            max_per: Some(max_per),
        });
        self
    }

    pub fn median(&self) -> f64 {
        median(&self.samples)
    }

    pub fn min(&self) -> f64 {
        self.samples.iter().copied().fold(f64::INFINITY, f64::min)
    }

    pub fn max(&self) -> f64 {
        self.samples
            .iter()
            .copied()
            .fold(f64::NEG_INFINITY, f64::max)
    }
}

/// The `q` quantile (0 to 1) of `samples`, by the nearest rank.
pub fn percentile(samples: &[f64], q: f64) -> f64 {
    let mut sorted = samples.to_vec();
    sorted.sort_by(f64::total_cmp);
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = (q.clamp(0.0, 1.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

pub fn median(samples: &[f64]) -> f64 {
    let mut s = samples.to_vec();
    s.sort_by(f64::total_cmp);
    match s.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => s[n / 2],
        n => (s[n / 2 - 1] + s[n / 2]) / 2.0,
    }
}

/// All figures of one run.
pub struct Report {
    pub config: Map<String, Value>,
    pub figures: Vec<Figure>,
}

impl Report {
    fn get(&self, key: &str) -> Option<&Figure> {
        self.figures.iter().find(|f| f.key == key)
    }

    fn ratio(&self, f: &Figure) -> Option<f64> {
        let b = self.get(f.baseline?)?;
        Some(f.median() / b.median())
    }

    fn met(&self, f: &Figure) -> Option<bool> {
        let t = f.target.as_ref()?;
        let mut ok = true;
        if let Some(max) = t.max_ratio {
            ok &= self.ratio(f).is_some_and(|r| r <= max);
        }
        if let Some(max) = t.max_abs {
            ok &= f.median() <= max;
        }
        if let Some(max) = t.max_per {
            ok &= f.per.is_some_and(|(n, _)| n > 0.0 && f.median() / n <= max);
        }
        Some(ok)
    }

    pub fn json(&self) -> Value {
        let mut figures = Map::new();
        for f in &self.figures {
            figures.insert(
                f.key.to_string(),
                json!({
                    "label": f.label,
                    "unit": f.unit.name(),
                    "median": f.median(),
                    "min": f.min(),
                    "max": f.max(),
                    "samples": f.samples,
                    "baseline": f.baseline,
                    "ratio": self.ratio(f),
                    "target": f.target.as_ref().map(|t| t.text),
                    "met": self.met(f),
                }),
            );
        }
        json!({ "config": self.config, "figures": figures })
    }

    pub fn table(&self) -> String {
        let header = [
            "figure", "median", "min", "max", "n", "baseline", "ratio", "target", "met",
        ];
        let mut rows: Vec<[String; 9]> = vec![header.map(str::to_string)];
        for f in &self.figures {
            rows.push([
                f.label.to_string(),
                match f.per {
                    Some((n, what)) if n > 0.0 => {
                        format!(
                            "{} ({:.1} B/{what})",
                            f.unit.show(f.median()),
                            f.median() / n
                        )
                    }
                    _ => f.unit.show(f.median()),
                },
                f.unit.show(f.min()),
                f.unit.show(f.max()),
                f.samples.len().to_string(),
                f.baseline
                    .and_then(|b| self.get(b))
                    .map_or(String::new(), |b| b.label.to_string()),
                self.ratio(f).map_or(String::new(), |r| format!("{r:.3}")),
                f.target
                    .as_ref()
                    .map_or(String::new(), |t| t.text.to_string()),
                match self.met(f) {
                    Some(true) => "yes".into(),
                    Some(false) => "NO".into(),
                    None => String::new(),
                },
            ]);
        }
        let mut widths = [0usize; 9];
        for row in &rows {
            for (w, cell) in widths.iter_mut().zip(row) {
                *w = (*w).max(cell.chars().count());
            }
        }
        let mut out = String::new();
        for (i, row) in rows.iter().enumerate() {
            let line: Vec<String> = row
                .iter()
                .zip(widths)
                .enumerate()
                .map(|(c, (cell, w))| {
                    let pad = w - cell.chars().count();
                    if (1..=4).contains(&c) || c == 6 {
                        format!("{}{cell}", " ".repeat(pad))
                    } else {
                        format!("{cell}{}", " ".repeat(pad))
                    }
                })
                .collect();
            out.push_str(line.join("  ").trim_end());
            out.push('\n');
            if i == 0 {
                let rule: Vec<String> = widths.iter().map(|&w| "-".repeat(w)).collect();
                out.push_str(&rule.join("  "));
                out.push('\n');
            }
        }
        out
    }
}
