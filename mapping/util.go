package mapping

import (
	"errors"
	"sort"
)

// joinErrs joins errors in a stable order (map iteration is random).
func joinErrs(errs []error) error {
	sort.Slice(errs, func(i, j int) bool { return errs[i].Error() < errs[j].Error() })
	return errors.Join(errs...)
}
