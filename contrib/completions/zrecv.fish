complete -c zrecv -l listen -d 'Address to listen on: IP:PORT, [IPV6]:PORT, IP, or PORT. Port 0 picks a free port. The first line on stderr is `listening on ADDR` with the bound address' -r
complete -c zrecv -l dir -d 'Directory to write into' -r -F
complete -c zrecv -l timeout -d 'Seconds to wait for a sender at any step; a stalled transfer is dropped after it' -r
complete -c zrecv -l hash-threads -d 'Threads that hash one file\'s pieces as it lands (default: the machine\'s cores)' -r
complete -c zrecv -l max-transfers -d 'Most transfers served at once; further senders wait for a slot (see --slot-wait)' -r
complete -c zrecv -l slot-wait -d 'Seconds a sender waits for a free slot when --max-transfers are running, before it is refused as busy (zsend shows it waiting). Keep it below the senders\' --timeout' -r
complete -c zrecv -l partial-max-age -d 'Remove hidden partial and temporary files (.zrecv-*.part, .zrecv-*.resume) in DIR and its subdirectories once they have not been modified for this long: at start, then every quarter of it (at least hourly) while serving. A number with a unit: 90s, 30m, 12h, 2d; a bare number is seconds. Keep it well above --timeout' -r
complete -c zrecv -l token-file -d 'File holding a secret shared with senders: each must prove it knows it before anything touches the disk, and zrecv proves it back' -r -F
complete -c zrecv -l allow-forward -d 'Networks this receiver may forward to when a sender asks for a chain (zsend --to): CIDRs or addresses, comma-separated. Without it, zrecv never forwards' -r
complete -c zrecv -l once -d 'Serve one transfer, then exit with its result'
complete -c zrecv -l force -d 'Replace existing files'
complete -c zrecv -l stdout -d 'Write the payload to standard output instead of a file, for another program to read. The root is still checked: a mismatch makes zrecv (and zsend) exit non-zero, so the reader must look at the exit status. A sender\'s --no-verify skips the check (zrecv says so on stderr and exits 0); only a token keeps untrusted senders out. Needs --once'
complete -c zrecv -l trust-links -d 'Make every symbolic link of a tree as it was sent (absolute ones, dangling ones, ones leading out of the tree), even from a sender without a token. A sender that proved the token (--token-file) is trusted so without this. Otherwise a link is made only when it resolves inside its own tree, and the others are refused and counted. zrecv never follows a link it made, either way'
complete -c zrecv -l preserve-privileged -d 'Keep owners and groups, setuid and setgid bits, file capabilities and other security.* and trusted.* attributes, and make device files, as a sender with -a sends them: only for a sender that proved the token (--token-file), and only when zrecv runs as root. Without it such metadata is not kept (counted, and the sender exits 9), and device files are refused'
complete -c zrecv -l rehash -d 'Hash every file of a tree that a sender checks against the copy here. Without it, a file this receiver landed or hashed before, and that has not changed since (the same inode, size, mtime and ctime; no one can set a ctime), is answered with the SHA-256 root remembered then, in DIR/.zrecv-KEY.roots, without reading it. Use it after a crash, or to catch a disk that changed bytes on its own'
complete -c zrecv -l list-partials -d 'List the partials kept in DIR (and its subdirectories) for resuming: the name each belongs to, how much of it is held, the space it takes, its age. Then exit'
complete -c zrecv -l remove-partials -d 'Remove the partials kept in DIR for resuming (not one a running transfer holds), saying what each held. Then exit'
complete -c zrecv -l json -d 'Print one JSON line per finished transfer on stdout'
complete -c zrecv -s q -l quiet -d 'Print nothing but errors (and the warning that no --token-file leaves the receiver open)'
complete -c zrecv -s v -l verbose -d 'More detail on stderr (-v: decisions such as fallbacks, -vv: debugging)'
complete -c zrecv -s h -l help -d 'Print help (see more with \'--help\')'
complete -c zrecv -s V -l version -d 'Print version'
