//! The help pages, laid out like manual pages: clap's templates, with the
//! usage line and the options filled in by clap from the definitions in
//! `args`. (No braces in the text: clap reads `{...}` as a tag.)
//!
//! ENVIRONMENT lists every variable the library reads (`src/options.rs`);
//! a test in `cli/tests/cli.rs` checks that none is missing.

/// The variables, shared by the three pages that list them.
macro_rules! environment {
    () => {
        "\
ENVIRONMENT
    Read by the tool:

    BUDDYSLAB_LIB=PATH
        The library to preload when --lib is not given.

    Read by the library (run passes them on to the program; its options
    set the first four):

    BUDDYSLAB_MMAP_THRESHOLD=SIZE
        Requests of at least SIZE bytes get a large block of their own
        (default 128k and adaptive, at most 32m; suffixes k, m, g); setting
        it stops the adaptation.
    BUDDYSLAB_DECAY_MS=MS
        How long free memory stays resident before it goes back to the
        kernel (default 1000; 0: at the next slow path).
    BUDDYSLAB_STATS=1|text|json|0
        The heap views on stderr at exit, as text or as one JSON object.
    BUDDYSLAB_HEAPMAP=FILE.svg
        An SVG map of the heap (one row per chunk, one cell per page),
        written at exit.
    BUDDYSLAB_ADDRSPACE_SVG=FILE.svg
        The process address space (segments, gaps, buddyslab's regions)
        drawn as SVG at exit.
    BUDDYSLAB_STATS_FILE=FILE
        The views go to FILE instead of stderr (text unless
        BUDDYSLAB_STATS=json). In this and the two paths above, %p is the
        process id, so each process of a tree writes its own file.
    BUDDYSLAB_STATS_SIGNAL=USR1|USR2|N
        On this signal the views, heap map and drawing are written again,
        at the process's next slow path (the handler only sets a flag).
    BUDDYSLAB_STATS_INTERVAL_MS=MS
        The views, heap map and drawing are written again every MS
        milliseconds (checked at slow paths), not only at exit.
    BUDDYSLAB_LIVE=1
        Publish the views in /dev/shm/buddyslab-PID, refreshed when read,
        for buddyslab top PID and buddyslab views PID (run --live sets it).
    BUDDYSLAB_PROF=FILE
        Sampled heap profiling: the live heap by call stack is written to
        FILE at exit (%p: the process id), and at the views' interval or
        signal, in the text format pprof reads, with a leak report on
        stderr at exit; read it with `buddyslab prof FILE`.
    BUDDYSLAB_PROF_RATE=SIZE
        Mean bytes allocated between two samples (default 512k).
    BUDDYSLAB_LARGE_CACHE=SIZE
        Cap on released large mappings kept for reuse (default 64m, also
        bounded by the trim threshold; 0 turns the cache off).
    BUDDYSLAB_LARGE_CACHE_MS=MS
        How long a released mapping stays cached (default 1000).
    BUDDYSLAB_VERBOSE=1
        Print the options in force on stderr at start-up.
    MALLOC_MMAP_THRESHOLD_=BYTES, MALLOC_TRIM_THRESHOLD_=BYTES
        glibc's names, honoured as glibc does; setting either stops the
        adaptation.
    MALLOC_PERTURB_=BYTE
        glibc's: new blocks are filled with BYTE^0xff and freed ones with
        BYTE (calloc still zeroes); thread caches stand aside meanwhile.
    GLIBC_TUNABLES=glibc.malloc.NAME=VALUE:...
        mmap_threshold, trim_threshold and perturb as above; mmap_max and
        top_pad stop the adaptation; other glibc.malloc tunables have no
        meaning here and are reported.

    Set by the tool, not by hand:

    BUDDYSLAB_STATS_PPID=PID
        With BUDDYSLAB_STATS, BUDDYSLAB_HEAPMAP or BUDDYSLAB_ADDRSPACE_SVG,
        only a process whose parent is PID writes the views (run no
        longer sets it: every process of the tree writes its own).
    BUDDYSLAB_ANNOUNCE=FD:INODE
        The pipe on which the library says whether its malloc is the one
        the process uses.

    The library reports any other BUDDYSLAB_* variable, and a malformed
    value, on stderr (once per process tree), and otherwise ignores it.

"
    };
}

/// Where the library is looked for, shared like [`environment`].
macro_rules! the_library {
    () => {
        "\
THE LIBRARY
    run and compare preload the first of:
      1. --lib PATH;
      2. BUDDYSLAB_LIB;
      3. libbuddyslab.so in the directory of the buddyslab executable
         (target/release/ after `cargo build --release`);
      4. libbuddyslab.so in ../lib/ from that directory (PREFIX/lib/ after
         `scripts/install.sh`, which installs PREFIX/bin/buddyslab).

"
    };
}

/// The exit statuses the two commands share.
macro_rules! exit_common {
    () => {
        "    125 for buddyslab's own errors (bad option, library missing or not
    a shared library, statically linked program), 126 when PROGRAM cannot
    be executed, 127 when it is not found.
"
    };
}

/// `buddyslab --help`.
pub const MAIN: &str = concat!(
    "\
NAME
    buddyslab - run a program on the buddyslab malloc, or compare mallocs

SYNOPSIS
    buddyslab run [OPTIONS] [--] PROGRAM [ARGS...]
    buddyslab compare [OPTIONS] [--] PROGRAM [ARGS...]
    buddyslab views [--json] PID
    buddyslab top [--once] [--interval SECONDS] PID
    buddyslab prof [--svg OUT.svg] [--top N] FILE
    buddyslab completions SHELL
    buddyslab help [COMMAND] | --help | --version

DESCRIPTION
    buddyslab run starts PROGRAM with libbuddyslab.so preloaded
    (LD_PRELOAD), so that every malloc, free, calloc, realloc and the rest
    of glibc's malloc API in the program and in the libraries it uses go to
    buddyslab, checks that they really did, and prints a summary of the run
    (time, peak RSS, page faults).

    buddyslab compare runs PROGRAM several times under glibc's own malloc,
    buddyslab, and each of jemalloc, mimalloc and tcmalloc installed, and
    prints the median time, peak RSS and minor faults of each with their
    spread and their ratios to glibc; it also checks that the output does
    not depend on the malloc.

    `buddyslab help COMMAND` or `buddyslab COMMAND --help` is the manual of
    one command, with its options.

COMMANDS
",
    "{subcommands}",
    "

OPTIONS
",
    "{options}",
    "

",
    environment!(),
    the_library!(),
    "\
EXIT STATUS
    run: the program's exit status; if the program was killed by a signal,
    buddyslab kills itself with the same signal (a shell then shows 128 +
    the signal number). compare: 0 when every run exited as it did on
    glibc and printed the same output; 1 when one did not, or passed
    --timeout.
",
    exit_common!(),
    "
EXAMPLES
    buddyslab run --stats -- python3 -c 'print(sum(range(10**6)))'
        Run Python on buddyslab and print the allocator's statistics.

    buddyslab compare --runs 3 --chart sort.svg -- sort -n numbers.txt
        Time sort under every malloc on the machine, three runs each.

    buddyslab completions bash > /etc/bash_completion.d/buddyslab
        Complete buddyslab's commands and options in bash.
"
);

/// `buddyslab run --help`.
pub const RUN: &str = concat!(
    "\
NAME
    buddyslab run - run a program with libbuddyslab.so as its malloc

SYNOPSIS
    ",
    "{usage}",
    "

DESCRIPTION
    buddyslab run starts PROGRAM with libbuddyslab.so preloaded
    (LD_PRELOAD), so that every malloc, free, calloc, realloc and the rest
    of glibc's malloc API in the program and in the libraries it uses go to
    buddyslab. The options become BUDDYSLAB_* environment variables, read by
    the library. Before starting, the program is checked: a statically
    linked program cannot have its malloc replaced and is refused. When the
    program has started, the library reports whether its malloc is the one
    the process really uses; if the program brings its own malloc (or the
    loader refused the library), run says so. The program's standard
    streams are its own. At the end a short summary goes to stderr: whether
    buddyslab was bound, the exit status, wall time, user and system time,
    peak resident set size and page faults (from wait4(2)); a closed
    stderr drops it without changing the exit status. Signals sent to
    buddyslab (kill, timeout) are passed on to the program.

OPTIONS
",
    "{options}",
    "

",
    environment!(),
    the_library!(),
    "\
EXIT STATUS
    The program's exit status; if the program was killed by a signal,
    buddyslab kills itself with the same signal (a shell then shows 128 +
    the signal number).
",
    exit_common!(),
    "
EXAMPLES
    buddyslab run --stats -- python3 -c 'print(sum(range(10**6)))'
        Run Python on buddyslab and print the allocator's statistics.

    buddyslab run --heapmap heap.svg -- sort big.txt > sorted.txt
        Sort a file, then look at heap.svg in a browser.
"
);

/// `buddyslab compare --help`.
pub const COMPARE: &str = concat!(
    "\
NAME
    buddyslab compare - time a program under several mallocs

SYNOPSIS
    ",
    "{usage}",
    "

DESCRIPTION
    buddyslab compare runs PROGRAM under several mallocs: glibc's own (no
    preload), buddyslab, and each of jemalloc, mimalloc and tcmalloc whose
    Debian library is installed (libjemalloc.so.2, libmimalloc.so.2,
    libtcmalloc_minimal.so.4), plus any given with --with. The runs are
    interleaved: round 1 runs the program once under every malloc, then
    round 2, and so on, the order rotating each round, so that noise on the
    machine falls on all of them alike. It prints a table of the median
    wall time (with the fastest and slowest run), peak RSS and minor
    faults, each with its ratio to glibc (or to the first malloc when glibc
    is left out), and warns when the program runs too briefly (under 50 ms)
    for its time to mean much. Peak RSS includes the pages of the malloc's
    library that the program maps; each library is dropped from the page
    cache before the first round, so that it is read in as an installed
    library is (a library just built can be mapped whole). The program's
    standard output and exit
    status must be the same under every malloc, since a malloc that changes
    what a program prints is broken; a difference is reported with the
    first line that differs (--allow-output-diff compares the exit status
    only). If the output already varies between runs on glibc alone, it is
    not compared. A library the loader refuses, or a buddyslab that is not
    bound in the program, stops the comparison, since it would measure
    glibc under another name. Every malloc runs in the same environment
    but for its preload: BUDDYSLAB_* variables are not passed on (use the
    options). Progress goes to stderr, the table (or --json) to stdout.
    Standard input is empty unless --input is given.

OPTIONS
",
    "{options}",
    "

",
    the_library!(),
    "\
EXIT STATUS
    0 when every run exited as it did on glibc and printed the same output;
    1 when a run's output or exit status differed, or a run passed
    --timeout.
",
    exit_common!(),
    "
EXAMPLES
    buddyslab compare --runs 3 --chart sort.svg -- sort -n numbers.txt
        Time sort under every malloc on the machine, three runs each.

    buddyslab compare --only glibc,buddyslab --with mine=./libmine.so -- ./a.out
        Compare glibc, buddyslab and your own malloc on a program.

    buddyslab compare --json --timeout 60 --allow-output-diff -- ./bench
        A benchmark that prints its own timings, for a script to read.
"
);

/// `buddyslab views --help`.
pub const VIEWS: &str = concat!(
    "\
NAME
    buddyslab views - print the views of a running process

SYNOPSIS
    ",
    "{usage}",
    "

DESCRIPTION
    Prints the views (totals, buddyinfo, slabinfo, maps, faults,
    fragmentation, address space) of PID, a process running on buddyslab
    with BUDDYSLAB_LIVE=1 (buddyslab run --live sets it). The process is
    not stopped: it is asked for a fresh copy, which it writes into its
    live page (/dev/shm/buddyslab-PID) at its next slow path; a process
    that reaches none within --wait (asleep, or every call served from its
    thread caches) shows its last copy, and a line on stderr says how old.

ARGUMENTS
",
    "{positionals}",
    "

OPTIONS
",
    "{options}",
    "

EXAMPLES
    buddyslab run --live -- ./server & buddyslab views --json $!
"
);

/// `buddyslab top --help`.
pub const TOP: &str = concat!(
    "\
NAME
    buddyslab top - watch a running process's heap, like slabtop

SYNOPSIS
    ",
    "{usage}",
    "

DESCRIPTION
    Shows, refreshed every --interval, slabtop's summary lines and columns
    for the slab caches of PID (a process on buddyslab with
    BUDDYSLAB_LIVE=1), its buddy lists as /proc/buddyinfo prints them, its
    totals (in use, peak, mapped, resident, metadata, calls) and its minor
    fault rate next to the rate the page-table shadow predicts. Empty
    caches are left out; the most objects come first. The figures are read
    from the process's live page without stopping it.

ARGUMENTS
",
    "{positionals}",
    "

OPTIONS
",
    "{options}",
    "

EXAMPLES
    buddyslab top --interval 0.5 1234
    buddyslab top --once 1234 > screen.txt
"
);

/// `buddyslab prof --help`.
pub const PROF: &str = concat!(
    "\
NAME
    buddyslab prof - which call sites hold the live heap, from a profile

SYNOPSIS
    ",
    "{usage}",
    "

DESCRIPTION
    Reads a heap profile that the library wrote (BUDDYSLAB_PROF=FILE;
    gperftools' heap-profile text format, which pprof also reads), names
    its frames with addr2line (binutils) through the profile's list of
    mapped files, and prints the call sites with the most live bytes,
    largest first: the estimated live bytes (the sampled bytes, each
    sample scaled as pprof does), their share of the estimated total, the
    samples, and the caller.
    A call site is the first frame outside the allocator. Programs built
    with -g give file and line; without it, the function name or the
    object and offset.

ARGUMENTS
",
    "{positionals}",
    "

OPTIONS
",
    "{options}",
    "

EXAMPLES
    BUDDYSLAB_PROF=heap.%p buddyslab run -- ./server
    buddyslab prof heap.12345
        Profile a program's live heap, then list its largest call sites.

    buddyslab prof heap.12345 --svg heap.svg
        Also draw the live heap as a flame graph.
"
);

/// `buddyslab completions --help`.
pub const COMPLETIONS: &str = concat!(
    "\
NAME
    buddyslab completions - print a shell's completion script

SYNOPSIS
    ",
    "{usage}",
    "

DESCRIPTION
    Prints the script that teaches SHELL to complete buddyslab's commands,
    options and file names, and the program after them.

ARGUMENTS
",
    "{positionals}",
    "

OPTIONS
",
    "{options}",
    "

EXAMPLES
    buddyslab completions bash > ~/.local/share/bash-completion/completions/buddyslab
    buddyslab completions zsh > ~/.zfunc/_buddyslab
    buddyslab completions fish > ~/.config/fish/completions/buddyslab.fish
"
);
