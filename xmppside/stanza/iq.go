package stanza

// IQType is the type attribute of an IQ stanza (RFC 6120 §8.2.3).
type IQType uint8

// The IQ types. IQInvalid is anything else, including a missing type.
const (
	IQInvalid IQType = iota
	// IQGet asks for information; it must be answered.
	IQGet
	// IQSet asks for a change; it must be answered.
	IQSet
	// IQResult answers a get or set.
	IQResult
	// IQError answers a get or set that failed.
	IQError
)

var iqTypeNames = [...]string{"", "get", "set", "result", "error"}

// ParseIQType reads a type attribute; an unknown value is IQInvalid.
func ParseIQType(s string) IQType {
	for i, n := range iqTypeNames {
		if i > 0 && n == s {
			return IQType(i)
		}
	}
	return IQInvalid
}

// String returns the attribute value ("" for IQInvalid).
func (t IQType) String() string {
	if int(t) < len(iqTypeNames) {
		return iqTypeNames[t]
	}
	return ""
}
