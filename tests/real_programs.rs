//! Real programs under `LD_PRELOAD=libbuddyslab.so`: python3, perl, gcc,
//! git, sort and sqlite3 each run a deterministic workload three times,
//! once on plain glibc, once under the default library and once under the
//! secure one (`libbuddyslab_secure.so`), each run in a fresh directory
//! with the same inputs. All must exit 0 and print the same stdout and
//! stderr.
//!
//! A missing program fails the test with the Debian package to install
//! (`.ci/run` installs them all). Needs `target/release/libbuddyslab.so`:
//! run `cargo build --release && cargo test --release --workspace`.

mod common;

use common::{
    clean_malloc_env, find_program, fresh_dir, library, remove_scratch, run, scratch_dir, secure_library, tail, Outcome,
};
use std::fmt::Write as _;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

/// Far above any normal run (seconds); only stops a hang.
const HANG_GUARD: Duration = Duration::from_secs(300);

/// One workload: a program, its arguments, and the files it starts with.
struct Workload<'a> {
    /// Test name, also the scratch directory's name.
    name: &'a str,
    /// The program the test is about, found in PATH (checked up front so a
    /// missing one is reported with its package).
    program: &'a str,
    /// The Debian package that provides `program`.
    package: &'a str,
    /// The command to run, in the scratch directory: `argv[0]` and the rest.
    argv: &'a [&'a str],
    /// Files written into the scratch directory before each run.
    files: &'a [(&'a str, &'a [u8])],
    /// Extra environment for both runs.
    env: &'a [(&'a str, &'a str)],
}

/// Runs `workload` on glibc and under the preload, each in a fresh
/// directory, and checks that both succeed with identical output.
fn compare(workload: &Workload) {
    let lib = library();
    let secure = secure_library();
    let program = find_program(workload.program, workload.package);
    for (other, package) in [("bash", "bash"), ("sha256sum", "coreutils")] {
        find_program(other, package);
    }

    let plain = run_in(workload, "glibc", None);
    assert!(
        plain.success(),
        "{} failed on plain glibc, so the workload itself is broken:\n{}",
        workload.name,
        plain.report()
    );
    let preloads = [("buddyslab", &lib), ("buddyslab-secure", &secure)];
    for (label, lib) in preloads {
        compare_one(workload, &plain, label, lib);
    }
    eprintln!(
        "ran {} ({}) on glibc and under both libraries: identical output ({} lines)",
        workload.name,
        program.display(),
        plain.stdout.lines().count()
    );
    for label in std::iter::once("glibc").chain(preloads.map(|(label, _)| label)) {
        remove_scratch(&scratch_dir("real-programs").join(dir_name(workload, label)));
    }
}

/// Runs `workload` under the library `lib` and checks it against the
/// glibc run `plain`.
fn compare_one(workload: &Workload, plain: &Outcome, label: &str, lib: &Path) {
    let preloaded = run_in(workload, label, Some(lib));
    assert!(
        preloaded.success(),
        "{} failed under LD_PRELOAD={} (it succeeds on plain glibc):\n{}",
        workload.name,
        lib.display(),
        preloaded.report()
    );
    if plain.stdout != preloaded.stdout || plain.stderr != preloaded.stderr {
        panic!(
            "{}: output differs between glibc and LD_PRELOAD={}\n{}\n\
             === glibc stdout (tail) ===\n{}\n=== {label} stdout (tail) ===\n{}\n\
             === glibc stderr (tail) ===\n{}\n=== {label} stderr (tail) ===\n{}",
            workload.name,
            lib.display(),
            first_difference(&plain.stdout, &preloaded.stdout)
                .or_else(|| first_difference(&plain.stderr, &preloaded.stderr))
                .unwrap_or_default(),
            tail(&plain.stdout, 2000),
            tail(&preloaded.stdout, 2000),
            tail(&plain.stderr, 2000),
            tail(&preloaded.stderr, 2000),
        );
    }
    assert!(
        !plain.stdout.is_empty(),
        "{}: the workload printed nothing",
        workload.name
    );
}

/// The name of the directory (under `target/tmp/real-programs`) that
/// `workload` runs in under `label`.
fn dir_name(workload: &Workload, label: &str) -> String {
    format!("{}-{label}", workload.name)
}

fn run_in(workload: &Workload, label: &str, preload: Option<&Path>) -> Outcome {
    let dir = fresh_dir("real-programs", &dir_name(workload, label));
    for (name, contents) in workload.files {
        let path = dir.join(name);
        std::fs::write(&path, contents).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
    }
    let mut cmd = Command::new(workload.argv[0]);
    cmd.args(&workload.argv[1..]).current_dir(&dir);
    clean_malloc_env(&mut cmd);
    // Same locale, time zone and home everywhere, and no user configuration.
    cmd.env("LC_ALL", "C").env("TZ", "UTC").env("HOME", &dir);
    for (key, value) in workload.env {
        cmd.env(key, value);
    }
    if let Some(lib) = preload {
        cmd.env("LD_PRELOAD", lib);
    }
    run(cmd, HANG_GUARD)
}

/// "line N: glibc `...` vs buddyslab `...`" for the first differing line.
fn first_difference(a: &str, b: &str) -> Option<String> {
    let mut la = a.lines();
    let mut lb = b.lines();
    for n in 1.. {
        match (la.next(), lb.next()) {
            (None, None) => return None,
            (x, y) if x == y => continue,
            (x, y) => {
                return Some(format!(
                    "first difference at line {n}: glibc {:?} vs buddyslab {:?}",
                    x.unwrap_or("<end>"),
                    y.unwrap_or("<end>")
                ))
            }
        }
    }
    None
}

/// A deterministic pseudo-random sequence (xorshift64*), for generating
/// inputs without a dependency.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

const PYTHON_SCRIPT: &str = r#"
import collections, hashlib, json, threading

digest = hashlib.sha256()

# Dicts: 200k entries of nested values, a JSON round trip, then churn.
d = {}
for i in range(200000):
    d["key-%d-%d" % (i, (i * 7919) % 10007)] = {"i": i, "sq": i * i, "s": str(i) * 3,
                                                 "l": [i, i + 1, i % 13]}
text = json.dumps(d, sort_keys=True)
back = json.loads(text)
assert back == d
digest.update(text.encode())
for i in range(0, 200000, 3):
    del d["key-%d-%d" % (i, (i * 7919) % 10007)]
for i in range(50000):
    d["new-%d" % i] = bytes(range(i % 200))
digest.update(repr(sorted(d)[:1000]).encode())
print("dict entries:", len(d))
print("json bytes:", len(text))

# Threads doing string work; results combined in thread order.
results = [None] * 6
def work(t):
    parts = []
    counts = collections.Counter()
    for k in range(20000):
        w = ("%d-%s" % (k * (t + 1), "abcdefghij"[k % 10] * (k % 17))).upper()
        parts.append(w[::-1])
        counts[w[:3]] += 1
    joined = ",".join(parts)
    pieces = joined.split(",")
    results[t] = "%s %d %s" % (hashlib.sha256(joined.encode()).hexdigest()[:16],
                               len(pieces), counts.most_common(3))
threads = [threading.Thread(target=work, args=(t,)) for t in range(6)]
for t in threads:
    t.start()
for t in threads:
    t.join()
for r in results:
    print(r)
    digest.update(r.encode())
print("digest:", digest.hexdigest())
"#;

#[test]
fn python3() {
    compare(&Workload {
        name: "python3",
        program: "python3",
        package: "python3",
        argv: &["python3", "work.py"],
        files: &[("work.py", PYTHON_SCRIPT.as_bytes())],
        env: &[("PYTHONHASHSEED", "0"), ("PYTHONDONTWRITEBYTECODE", "1")],
    });
}

const PERL_SCRIPT: &str = r#"
use strict;
use warnings;

# A hash of 200k entries, sorted keys, deletions, a checksum over it all.
my %h;
for my $i (0 .. 199_999) {
    $h{"k$i-" . ($i * 7919 % 10007)} = [$i, "v" x ($i % 50), $i * $i];
}
my @keys = sort keys %h;
my $sum = 0;
for my $k (@keys) {
    $sum = ($sum + unpack("%32C*", $k . $h{$k}[1]) + $h{$k}[0]) % 4294967291;
}
print "keys: ", scalar(@keys), " sum: $sum\n";
delete $h{$_} for grep { /5-/ } @keys;
print "after delete: ", scalar(keys %h), "\n";

# Numeric sort and regexes over a long string.
my @nums = sort { $a <=> $b } map { ($_ * 7919) % 100_003 } 0 .. 199_999;
print "nums: $nums[0] $nums[1000] $nums[-1]\n";
my $text = join(" ", map { "word$_ number" . ($_ * 3) } 0 .. 99_999);
my @m = ($text =~ /word(\d*7) number(\d+)/g);
my %len;
$len{length $_}++ for split / /, $text;
(my $t2 = $text) =~ s/(\d+)/<$1>/g;
my @words = sort { length($b) <=> length($a) || $a cmp $b } split / /, $t2;
print "matches: ", scalar(@m), " lengths: ",
      join(",", map { "$_=$len{$_}" } sort { $a <=> $b } keys %len), "\n";
print "longest: @words[0..2]\n";
print "checksum: ", unpack("%32C*", $t2), " ", length($t2), "\n";
"#;

#[test]
fn perl() {
    compare(&Workload {
        name: "perl",
        program: "perl",
        package: "perl",
        argv: &["perl", "work.pl"],
        files: &[("work.pl", PERL_SCRIPT.as_bytes())],
        env: &[("PERL_HASH_SEED", "0"), ("PERL_PERTURB_KEYS", "0")],
    });
}

/// A C program with many functions, so the compiler has real work to do.
fn generated_c_program() -> String {
    let mut src = String::from("#include <stdio.h>\n#include <stdlib.h>\n#include <string.h>\n\n");
    let count = 150;
    for f in 0..count {
        let _ = write!(
            src,
            "static unsigned long f{f}(unsigned long x) {{\n\
             \x20   unsigned long acc = {f}u;\n\
             \x20   for (int i = 0; i < {iters}; i++) {{\n\
             \x20       switch ((x + i) % 4) {{\n\
             \x20       case 0: acc += x * {m} + i; break;\n\
             \x20       case 1: acc ^= (x << {s}) | (acc >> 3); break;\n\
             \x20       case 2: acc = acc * 31 + (x % {d}); break;\n\
             \x20       default: acc -= i * {f}u; break;\n\
             \x20       }}\n\
             \x20       x = x * 6364136223846793005ul + 1442695040888963407ul;\n\
             \x20   }}\n\
             \x20   return acc;\n\
             }}\n\n",
            iters = 50 + f % 37,
            m = f * 2 + 1,
            s = f % 13 + 1,
            d = f % 97 + 3,
        );
    }
    src.push_str("typedef unsigned long (*fn)(unsigned long);\nstatic const fn table[] = {");
    for f in 0..count {
        let _ = write!(src, "f{f},");
    }
    src.push_str(
        "};\n\nstatic int cmp(const void *a, const void *b) {\n\
         \x20   unsigned long x = *(const unsigned long *)a, y = *(const unsigned long *)b;\n\
         \x20   return x < y ? -1 : x > y;\n}\n\n\
         int main(void) {\n\
         \x20   size_t n = sizeof table / sizeof table[0];\n\
         \x20   unsigned long *v = malloc(n * sizeof *v);\n\
         \x20   char *text = calloc(n, 24);\n\
         \x20   for (size_t i = 0; i < n; i++) {\n\
         \x20       v[i] = table[i](i * 2654435761ul);\n\
         \x20       sprintf(text + strlen(text), \"%lx;\", v[i] & 0xffff);\n\
         \x20   }\n\
         \x20   qsort(v, n, sizeof *v, cmp);\n\
         \x20   unsigned long h = 1469598103934665603ul;\n\
         \x20   for (size_t i = 0; text[i]; i++) h = (h ^ (unsigned char)text[i]) * 1099511628211ul;\n\
         \x20   printf(\"min %lx max %lx median %lx hash %lx len %zu\\n\", v[0], v[n - 1], v[n / 2], h, strlen(text));\n\
         \x20   free(v);\n\
         \x20   free(text);\n\
         \x20   return 0;\n}\n",
    );
    src
}

#[test]
fn gcc() {
    let program = generated_c_program();
    // The compiler (driver, cc1, as, ld) runs preloaded; so does the result.
    // The assembly it writes must be the same byte for byte.
    compare(&Workload {
        name: "gcc",
        program: "gcc",
        package: "gcc",
        argv: &[
            "bash",
            "-c",
            "set -e; gcc -O2 -Wall -o prog prog.c; ./prog; \
             gcc -O2 -S -o prog.s prog.c; sha256sum prog.s; wc -l < prog.s",
        ],
        files: &[("prog.c", program.as_bytes())],
        env: &[],
    });
}

const GIT_SCRIPT: &str = r#"
set -euo pipefail
git init -q repo
cd repo
for i in $(seq 1 120); do
    export GIT_AUTHOR_DATE="$((1700000000 + i * 60)) +0000"
    export GIT_COMMITTER_DATE="$GIT_AUTHOR_DATE"
    seq "$i" $((i * 40)) > "numbers_$((i % 7)).txt"
    printf 'commit %d\nline %d of a file that changes\n' "$i" "$i" >> log.txt
    mkdir -p "dir$((i % 5))"
    printf '%s\n' "$(seq -s, 1 $((i % 50 + 1)))" > "dir$((i % 5))/file_$((i % 11)).csv"
    if [ $((i % 10)) -eq 0 ] && [ -e "numbers_$(((i / 10) % 7)).txt" ]; then
        git rm -qf "numbers_$(((i / 10) % 7)).txt"
    fi
    git add -A
    git commit -q -m "commit $i"
done
git gc -q
git log --oneline | wc -l
git rev-parse HEAD
git count-objects -v | grep -E '^(count|in-pack|packs):'
git fsck --full --strict
git log --stat --format='%H %an %ad %s' | sha256sum
git diff --stat HEAD~60 HEAD | tail -n 1
"#;

#[test]
fn git() {
    compare(&Workload {
        name: "git",
        program: "git",
        package: "git",
        argv: &["bash", "-c", GIT_SCRIPT],
        files: &[],
        env: &[
            ("GIT_AUTHOR_NAME", "Buddy Slab"),
            ("GIT_AUTHOR_EMAIL", "buddy@example.invalid"),
            ("GIT_COMMITTER_NAME", "Buddy Slab"),
            ("GIT_COMMITTER_EMAIL", "buddy@example.invalid"),
            ("GIT_CONFIG_NOSYSTEM", "1"),
            ("GIT_CONFIG_GLOBAL", "/dev/null"),
            // The initial branch name, without any config file.
            ("GIT_CONFIG_COUNT", "2"),
            ("GIT_CONFIG_KEY_0", "init.defaultBranch"),
            ("GIT_CONFIG_VALUE_0", "main"),
            ("GIT_CONFIG_KEY_1", "gc.auto"),
            ("GIT_CONFIG_VALUE_1", "0"),
        ],
    });
}

/// About 20 MB of lines: numbers, words and mixed keys, in a fixed order.
fn sort_input() -> Vec<u8> {
    const WORDS: [&str; 12] = [
        "slab", "buddy", "page", "order", "zone", "vma", "pte", "pmd", "cache", "magazine",
        "chunk", "arena",
    ];
    let mut rng = Rng(0x5EED_5EED_1234_5678);
    let mut out = Vec::with_capacity(21 << 20);
    while out.len() < 20 << 20 {
        let number = rng.below(1 << 40) as i64 - (1 << 39);
        let word = WORDS[rng.below(WORDS.len() as u64) as usize];
        let _ = std::io::Write::write_fmt(
            &mut out,
            format_args!(
                "{number} {word}{} {:x}\n",
                rng.below(1000),
                rng.next() >> 20
            ),
        );
    }
    out
}

#[test]
fn sort() {
    let input = sort_input();
    compare(&Workload {
        name: "sort",
        program: "sort",
        package: "coreutils",
        argv: &[
            "bash",
            "-c",
            "set -eo pipefail; sort input.txt > sorted.txt; sort -n input.txt > numeric.txt; \
             sort -k2,2 -k1,1n input.txt > keyed.txt; sort -u -k2,2 input.txt | wc -l; \
             sha256sum sorted.txt numeric.txt keyed.txt; wc -l < sorted.txt",
        ],
        files: &[("input.txt", &input)],
        env: &[],
    });
}

/// 100k rows inserted in one transaction, then aggregates, an index,
/// updates, deletes, a VACUUM and an integrity check.
fn sqlite_workload() -> String {
    let mut sql = String::from(
        "CREATE TABLE t(id INTEGER PRIMARY KEY, grp INTEGER, name TEXT, val REAL, pad BLOB);\n\
         BEGIN;\n",
    );
    let mut rng = Rng(0xDB_0123_4567);
    for id in 0..100_000u64 {
        let grp = rng.below(97);
        let name_len = 4 + rng.below(24) as usize;
        let name: String = (0..name_len)
            .map(|_| (b'a' + rng.below(26) as u8) as char)
            .collect();
        let val = rng.below(1_000_000) as f64 / 8.0;
        let _ = writeln!(
            sql,
            "INSERT INTO t VALUES({id}, {grp}, '{name}', {val}, zeroblob({}));",
            rng.below(300)
        );
    }
    sql.push_str(
        "COMMIT;\n\
         SELECT count(*), sum(val), min(name), max(name), sum(length(pad)) FROM t;\n\
         SELECT grp, count(*), sum(length(name)), round(avg(val), 3) FROM t \
             GROUP BY grp ORDER BY grp LIMIT 12;\n\
         CREATE INDEX t_grp_val ON t(grp, val);\n\
         CREATE INDEX t_name ON t(name);\n\
         SELECT id, name, val FROM t WHERE grp = 5 ORDER BY val DESC, id LIMIT 5;\n\
         SELECT count(DISTINCT substr(name, 1, 3)) FROM t;\n\
         SELECT name, count(*) FROM t GROUP BY name HAVING count(*) > 1 ORDER BY 2 DESC, 1 LIMIT 5;\n\
         UPDATE t SET val = val + 1, name = upper(name) WHERE id % 3 = 0;\n\
         DELETE FROM t WHERE id % 7 = 0;\n\
         SELECT count(*), total(val), max(name) FROM t;\n\
         SELECT group_concat(name, ',') FROM (SELECT name FROM t ORDER BY name LIMIT 20);\n\
         SELECT a.grp, count(*) FROM t a JOIN t b ON b.id = a.id - 1 AND a.grp = b.grp \
             GROUP BY a.grp ORDER BY 2 DESC, 1 LIMIT 3;\n\
         VACUUM;\n\
         PRAGMA integrity_check;\n",
    );
    sql
}

#[test]
fn sqlite3() {
    let sql = sqlite_workload();
    compare(&Workload {
        name: "sqlite3",
        program: "sqlite3",
        package: "sqlite3",
        argv: &["sqlite3", "-batch", "-bail", "work.db", ".read work.sql"],
        files: &[("work.sql", sql.as_bytes())],
        env: &[],
    });
}
