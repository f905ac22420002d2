complete -c zsend -l to -d 'Send one file to several hosts through a chain: the first receiver forwards it to the second while writing it, and so on (each receiver needs --allow-forward for the next). Comma-separated or repeated; every host\'s result is reported' -r
complete -c zsend -l name -d 'Name to give the file (or the directory) on the receiver, when sending one (default: its own name)' -r
complete -c zsend -l torrent -d 'Also write a BitTorrent v2 .torrent of the file (its piece layers included, from the same hashing pass) to PATH, once it landed: seeds for a swarm that verifies every piece against the same root. One file only' -r -F
complete -c zsend -l hash-threads -d 'Threads that hash one file\'s pieces on this side (default: the machine\'s cores)' -r
complete -c zsend -l token-file -d 'File holding a secret shared with the receiver; both sides then prove they know it (HMAC-SHA256 challenge-response; the token never crosses the wire)' -r -F
complete -c zsend -l timeout -d 'Seconds to wait for the receiver at any step before giving up' -r
complete -c zsend -s a -l archive -d 'Keep everything `rsync -aHAX` keeps: owners and groups (-o), extended attributes (-X), POSIX ACLs (-A), fifos, sockets and device files (-D), beside what every tree keeps (modes, mtimes, symbolic links, hard links). Owners, setuid/setgid bits, capabilities and devices land only where the receiver allows it (zrecv --preserve-privileged, with a token); what does not land so is counted, and zsend exits 9. For directories: a single file sent alone keeps its mode and mtime'
complete -c zsend -s o -s g -l owner -l group -d 'Keep owners and groups, by name where both ends know it, else by number'
complete -c zsend -l numeric-ids -d 'Send owners and groups by number only'
complete -c zsend -s X -l xattrs -d 'Keep extended attributes (user.*, and trusted.* and security.*, file capabilities among them, where this side can read them)'
complete -c zsend -s A -l acls -d 'Keep POSIX ACLs (access and default)'
complete -c zsend -l specials -d 'Make fifos and sockets on the receiver (-D: this and --devices)'
complete -c zsend -l devices -d 'Make device files on the receiver (one that allows it: zrecv --preserve-privileged)'
complete -c zsend -s D -d '--specials and --devices'
complete -c zsend -l no-links -d 'Leave symbolic links out of trees (by default they are sent as links, wherever they point; the receiver decides which it makes, see zrecv --trust-links)'
complete -c zsend -l no-hard-links -d 'Send each name of a file with several names (hard links) as a file of its own (by default it crosses once and lands with all its names)'
complete -c zsend -l links -d 'Accepted for older scripts: links are sent by default'
complete -c zsend -l quick-check -d 'Take a file the receiver already has with the same size and mtime as unchanged, without comparing tree roots (rsync\'s quick check). Faster for a tree sent again, but such files are not verified (`--json` then says `"verified": false`)'
complete -c zsend -l rehash -d 'Hash every file of a tree the receiver already has, rather than use the root zsend remembered for a file unchanged since it hashed or sent it (the same inode, size, mtime and ctime; no one can set a ctime). Roots are remembered in $XDG_CACHE_HOME/zsend (or ~/.cache/zsend), one file per tree. The receiver has its own (zrecv --rehash)'
complete -c zsend -l fail-fast -d 'With many files, stop at the first one that fails (default: send the others)'
complete -c zsend -l no-verify -d 'Skip hashing on both ends (lengths are still checked; the data is still made durable)'
complete -c zsend -l sha256 -d 'Also compute the file\'s plain SHA-256 (what sha256sum prints) on this side, beside the tree root both ends verify with, and print it. One file only; costs a core while it runs'
complete -c zsend -l inplace -d 'When the file exists on the receiver (which replaces files: zrecv --force), apply the update to it in place rather than beside it, as rsync --inplace: for images too large to hold twice. The pieces that differ go to a journal first, so a crash leaves the old version or the new one'
complete -c zsend -s W -l whole-file -d 'Send the whole file even when the receiver holds a version of it (by default only the 1 MiB pieces that differ cross, as rsync\'s delta)'
complete -c zsend -l json -d 'Print one JSON object describing the result on stdout'
complete -c zsend -s q -l quiet -d 'Print nothing but errors'
complete -c zsend -s v -l verbose -d 'More detail on stderr (-v: decisions such as fallbacks, -vv: debugging)'
complete -c zsend -s h -l help -d 'Print help (see more with \'--help\')'
complete -c zsend -s V -l version -d 'Print version'
