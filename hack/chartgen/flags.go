package main

import (
	"bufio"
	"fmt"
	"strings"
)

// flagDoc is one command-line flag as the binary's -help describes it.
type flagDoc struct {
	Name, Type, Usage string
	// Default is the text of "(default X)", unquoted; empty when the help names none.
	Default string
}

// parseHelp reads the flag list that Go's flag.PrintDefaults writes: a line "  -name type"
// (type left out for plain booleans) followed by tab-indented usage lines, the last of which
// may end in "(default X)".
func parseHelp(help string) ([]flagDoc, error) {
	var flags []flagDoc
	sc := bufio.NewScanner(strings.NewReader(help))
	for sc.Scan() {
		line := sc.Text()
		switch {
		case strings.HasPrefix(line, "  -"):
			fields := strings.Fields(strings.TrimPrefix(line, "  -"))
			f := flagDoc{Name: fields[0], Type: "bool"}
			if len(fields) > 1 {
				f.Type = fields[1]
			}
			flags = append(flags, f)
		case strings.HasPrefix(line, "    \t"):
			if len(flags) == 0 {
				return nil, fmt.Errorf("usage line before any flag: %q", line)
			}
			f := &flags[len(flags)-1]
			f.Usage = strings.TrimSpace(f.Usage + " " + strings.TrimSpace(line))
		}
	}
	for i := range flags {
		f := &flags[i]
		if j := strings.LastIndex(f.Usage, " (default "); j >= 0 && strings.HasSuffix(f.Usage, ")") {
			f.Default = strings.Trim(f.Usage[j+len(" (default "):len(f.Usage)-1], `"`)
			f.Usage = f.Usage[:j]
		}
	}
	if len(flags) == 0 {
		return nil, fmt.Errorf("no flags in the help text:\n%s", help)
	}
	return flags, nil
}

// parseArgs splits a container's args into the leading words (a subcommand such as
// "responder") and the flags, given as --name=value or --name (a boolean set to true).
func parseArgs(args []string) (words []string, flags map[string]string, err error) {
	flags = map[string]string{}
	for _, a := range args {
		if !strings.HasPrefix(a, "-") {
			if len(flags) > 0 {
				return nil, nil, fmt.Errorf("argument %q after the flags", a)
			}
			words = append(words, a)
			continue
		}
		name, value, ok := strings.Cut(strings.TrimLeft(a, "-"), "=")
		if !ok {
			value = "true"
		}
		if _, dup := flags[name]; dup {
			return nil, nil, fmt.Errorf("flag --%s given twice", name)
		}
		flags[name] = value
	}
	return words, flags, nil
}
