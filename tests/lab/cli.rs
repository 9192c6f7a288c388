//! The part of libtest's command line that `cargo test` and CI pass to a test program, so the
//! lab behaves like any other test target: name filters, `--exact`, `--skip`, `--list`,
//! `--ignored` and `--include-ignored`. Everything else libtest accepts is taken and ignored.

/// What the command line asks of the lab.
#[derive(Debug, Default)]
pub(crate) struct Args {
    /// `--list`: print the test names and run nothing.
    pub(crate) list: bool,
    /// `--include-ignored` or `--ignored`: the caller wants the lab to run whatever this
    /// machine lacks, so a missing prerequisite is a failure instead of a skip.
    pub(crate) strict: bool,
    exact: bool,
    filters: Vec<String>,
    skips: Vec<String>,
}

/// libtest options that take a value as the next argument (when not written `--opt=value`).
const WITH_VALUE: &[&str] = &[
    "--test-threads",
    "--color",
    "--format",
    "--logfile",
    "--skip",
    "--shuffle-seed",
    "-Z",
];

impl Args {
    pub(crate) fn parse(args: impl IntoIterator<Item = String>) -> Self {
        let mut out = Args::default();
        let mut args = args.into_iter();
        while let Some(arg) = args.next() {
            let (flag, inline) = match arg.split_once('=') {
                Some((f, v)) if f.starts_with('-') => (f.to_owned(), Some(v.to_owned())),
                _ => (arg.clone(), None),
            };
            match flag.as_str() {
                "--list" => out.list = true,
                "--include-ignored" | "--ignored" => out.strict = true,
                "--exact" => out.exact = true,
                f if WITH_VALUE.contains(&f) => {
                    let value = inline.or_else(|| args.next()).unwrap_or_default();
                    if f == "--skip" {
                        out.skips.push(value);
                    }
                }
                f if f.starts_with('-') => {}
                _ => out.filters.push(arg),
            }
        }
        out
    }

    /// Whether the filters select the scenario `test` (`natlab::login`): by its own name, or
    /// by the lab's (`natlab`, which also works with `--exact`).
    pub(crate) fn wants(&self, lab: &str, test: &str) -> bool {
        self.selects(test) || self.selects(lab)
    }

    /// Whether the filters select the test called `name`, as libtest decides it.
    fn selects(&self, name: &str) -> bool {
        let matches = |pattern: &String| {
            if self.exact {
                name == pattern
            } else {
                name.contains(pattern.as_str())
            }
        };
        (self.filters.is_empty() || self.filters.iter().any(matches))
            && !self.skips.iter().any(matches)
    }
}
