package main

import (
	"bufio"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
)

// processesMentioning returns pid -> arguments of every live process but
// exclude with an argument containing s.
func processesMentioning(s string, exclude int) (map[int][]string, error) {
	if runtime.GOOS != "linux" {
		return nil, errors.New("needs Linux's /proc")
	}
	entries, err := os.ReadDir("/proc")
	if err != nil {
		return nil, err
	}
	out := map[int][]string{}
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil || pid == exclude {
			continue
		}
		data, err := os.ReadFile(filepath.Join("/proc", e.Name(), "cmdline"))
		if err != nil || len(data) == 0 { // gone, or a zombie
			continue
		}
		args := strings.Split(strings.TrimRight(string(data), "\x00"), "\x00")
		if slices.ContainsFunc(args, func(a string) bool { return strings.Contains(a, s) }) {
			out[pid] = args
		}
	}
	return out, nil
}

// listening returns the local addresses ("127.0.0.1:5222", "[::]:80") of
// the TCP sockets pid listens on, matching its socket inodes with
// /proc/net/tcp and tcp6.
func listening(pid int) ([]string, error) {
	fds, err := os.ReadDir(fmt.Sprintf("/proc/%d/fd", pid))
	if err != nil {
		return nil, err
	}
	inodes := map[string]bool{}
	for _, fd := range fds {
		link, err := os.Readlink(fmt.Sprintf("/proc/%d/fd/%s", pid, fd.Name()))
		if err == nil && strings.HasPrefix(link, "socket:[") {
			inodes[strings.TrimSuffix(strings.TrimPrefix(link, "socket:["), "]")] = true
		}
	}
	var addrs []string
	for _, table := range []string{"tcp", "tcp6"} {
		f, err := os.Open(fmt.Sprintf("/proc/%d/net/%s", pid, table))
		if err != nil {
			return nil, err
		}
		sc := bufio.NewScanner(f)
		sc.Scan() // header
		for sc.Scan() {
			// sl local_address rem_address st tx:rx tr:when retrnsmt uid timeout inode
			fields := strings.Fields(sc.Text())
			if len(fields) < 10 || fields[3] != "0A" || !inodes[fields[9]] { // 0A: LISTEN
				continue
			}
			addrs = append(addrs, decodeAddr(fields[1]))
		}
		f.Close()
		if err := sc.Err(); err != nil {
			return nil, err
		}
	}
	return addrs, nil
}

// decodeAddr turns /proc/net/tcp's "0100007F:3AB6" (little-endian words)
// into "127.0.0.1:15030"; IPv6 addresses become "[hex]:port", except
// IPv4-mapped loopback, which is loopback.
func decodeAddr(s string) string {
	hexIP, hexPort, _ := strings.Cut(s, ":")
	port, _ := strconv.ParseUint(hexPort, 16, 16)
	if len(hexIP) == 8 {
		v, _ := strconv.ParseUint(hexIP, 16, 32)
		return fmt.Sprintf("%d.%d.%d.%d:%d", v&0xff, v>>8&0xff, v>>16&0xff, v>>24, port)
	}
	if hexIP == "0000000000000000FFFF00000100007F" {
		return fmt.Sprintf("127.0.0.1:%d", port)
	}
	return fmt.Sprintf("[%s]:%d", hexIP, port)
}
