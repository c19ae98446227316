package matrixfed

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"

	"maunium.net/go/mautrix/federation"
)

// loadOrCreateKey reads the signing key at path (Synapse's format), or
// generates one and writes it there, readable by the owner only. The key
// is written to a temporary file and renamed, so that a crash never
// leaves half a key.
func loadOrCreateKey(path string) (key *federation.SigningKey, created bool, err error) {
	data, err := os.ReadFile(path)
	if err == nil {
		key, err = federation.ParseSynapseKey(strings.TrimSpace(string(data)))
		if err != nil {
			return nil, false, fmt.Errorf("%w: %s: %w", ErrKey, path, err)
		}
		return key, false, nil
	}
	if !errors.Is(err, fs.ErrNotExist) {
		return nil, false, fmt.Errorf("%w: %w", ErrKey, err)
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return nil, false, fmt.Errorf("%w: %w", ErrKey, err)
	}
	key = federation.GenerateSigningKey()
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, []byte(key.SynapseString()+"\n"), 0o600); err != nil {
		return nil, false, fmt.Errorf("%w: %w", ErrKey, err)
	}
	if err := os.Rename(tmp, path); err != nil {
		return nil, false, fmt.Errorf("%w: %w", ErrKey, err)
	}
	return key, true, nil
}
