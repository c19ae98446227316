package matrixside

import (
	"net/http"
	"net/http/httptest"
	"strconv"
	"testing"
	"time"
)

// TestTimedTransportOutcomes: each answer of the homeserver is counted
// under its outcome.
func TestTimedTransportOutcomes(t *testing.T) {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		code, _ := strconv.Atoi(r.URL.Query().Get("code"))
		w.WriteHeader(code)
	}))
	defer srv.Close()
	tr := &http.Transport{}
	defer tr.CloseIdleConnections()
	got := map[string]int{}
	client := &http.Client{Transport: timedTransport{next: tr, observe: func(o string, took time.Duration) {
		if took <= 0 {
			t.Errorf("no duration for %s", o)
		}
		got[o]++
	}}}
	for _, code := range []int{200, 204, 429, 503, 404, 403} {
		resp, err := client.Get(srv.URL + "/?code=" + strconv.Itoa(code))
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
	}
	if _, err := client.Get("http://127.0.0.1:1/"); err == nil {
		t.Fatal("a request to a closed port succeeded")
	}
	want := map[string]int{"ok": 2, "rate_limited": 1, "unreachable": 2, "error": 2}
	for o, n := range want {
		if got[o] != n {
			t.Errorf("%s: %d, want %d (all: %v)", o, got[o], n, got)
		}
	}
}
