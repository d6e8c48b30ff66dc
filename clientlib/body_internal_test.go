package clientlib

import (
	"encoding/json"
	"testing"

	"github.com/ldlm-io/ldlm/subjects"
)

// TestRequestBody: requestBody writes what json.Marshal writes, for the
// requests the client sends.
func TestRequestBody(t *testing.T) {
	key := newKey()
	for _, req := range []subjects.Request{
		{},
		{Key: key},
		{Size: 3, Key: key},
		{Size: 1_000_000, WaitTimeoutSeconds: 0.001, LockTimeoutSeconds: 365 * 24 * 60 * 60, Key: key},
		{WaitTimeoutSeconds: 1.5, Key: key},
		{LockTimeoutSeconds: 0.1234567891},
		{LockTimeoutSeconds: 12345678.9, Key: key},
	} {
		want, err := json.Marshal(req)
		if err != nil {
			t.Fatal(err)
		}
		if got := requestBody(req); string(got) != string(want) {
			t.Errorf("requestBody(%+v) = %s, want %s", req, got, want)
		}
	}
}
