package squall

import (
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"strconv"
	"strings"
	"time"
)

// DefaultTolerance is the oldest a webhook signature may be when VerifySignature
// is given a tolerance of 0.
const DefaultTolerance = 5 * time.Minute

// ErrInvalidSignature is returned by VerifySignature for a header that is
// malformed, too old, or does not match the body.
var ErrInvalidSignature = errors.New("squall: invalid webhook signature")

// Sign returns a Squall-Signature header for body, made at time t with secret
// (for the gateway's inbound POST /v1/hooks/{name} with --hook-secret).
func Sign(secret string, body []byte, t time.Time) string {
	ts := strconv.FormatInt(t.Unix(), 10)
	return "t=" + ts + ",v1=" + hex.EncodeToString(mac(secret, ts, body))
}

// VerifySignature checks a webhook's Squall-Signature header
// ("t=<unix>,v1=<hex HMAC-SHA256 of t.body>") against body and secret, and that
// t is no further than tolerance from now (0 means DefaultTolerance). It returns
// nil or an error that is ErrInvalidSignature. Deliveries are at least once: a
// receiver should also de-duplicate by the Squall-Task-Id header.
func VerifySignature(secret, header string, body []byte, tolerance time.Duration) error {
	if tolerance <= 0 {
		tolerance = DefaultTolerance
	}
	var ts string
	var sigs [][]byte
	for _, part := range strings.Split(header, ",") {
		key, value, _ := strings.Cut(strings.TrimSpace(part), "=")
		switch key {
		case "t":
			ts = value
		case "v1":
			if sig, err := hex.DecodeString(value); err == nil {
				sigs = append(sigs, sig)
			}
		}
	}
	unix, err := strconv.ParseInt(ts, 10, 64)
	if err != nil || len(sigs) == 0 {
		return invalid("malformed header")
	}
	if age := time.Since(time.Unix(unix, 0)); age > tolerance || age < -tolerance {
		return invalid("timestamp outside the tolerance")
	}
	want := mac(secret, ts, body)
	for _, sig := range sigs {
		if hmac.Equal(sig, want) {
			return nil
		}
	}
	return invalid("no signature matches")
}

func mac(secret, ts string, body []byte) []byte {
	h := hmac.New(sha256.New, []byte(secret))
	h.Write([]byte(ts + "."))
	h.Write(body)
	return h.Sum(nil)
}

type signatureError string

func (e signatureError) Error() string        { return "squall: invalid webhook signature: " + string(e) }
func (e signatureError) Is(target error) bool { return target == ErrInvalidSignature }

func invalid(why string) error { return signatureError(why) }
