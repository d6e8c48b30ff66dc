package service_test

import (
	"encoding/json"
	"testing"

	"github.com/ldlm-io/ldlm/internal/ldlmtest"
	"github.com/ldlm-io/ldlm/subjects"
)

// On an unlock that frees a slot for a waiter, the waiter's grant leaves
// the service before the unlocker's reply: the hand-over to the next
// holder is the critical path of a contended lock, and the unlocker's
// reply can wait. Both replies come to one subscription here, and NATS
// keeps the order of one publisher's messages, so the order received is
// the order the service sent them in.
func TestGrantBeforeUnlockReply(t *testing.T) {
	srv := ldlmtest.Start(t)
	nc := srv.Connect(t)
	replies, err := nc.SubscribeSync("handover.>")
	if err != nil {
		t.Fatal(err)
	}
	if r := send(t, nc, subjects.OpLock, "job", `{"key":"holder-key"}`, ""); !r.Locked {
		t.Fatalf("lock job: %+v, want a grant", r)
	}
	lockSubject := subjects.Subject(subjects.DefaultPrefix, subjects.OpLock, "job")
	if err := nc.PublishRequest(lockSubject, "handover.waiter", []byte(`{"key":"waiter-key"}`)); err != nil {
		t.Fatal(err)
	}
	eventually(t, "the second lock request waits", func() bool { return srv.Service.Engine().Stats().Waiters == 1 })

	unlockSubject := subjects.Subject(subjects.DefaultPrefix, subjects.OpUnlock, "job")
	if err := nc.PublishRequest(unlockSubject, "handover.unlocker", []byte(`{"key":"holder-key"}`)); err != nil {
		t.Fatal(err)
	}
	first, err := replies.NextMsg(testTimeout)
	if err != nil {
		t.Fatalf("no reply: %v", err)
	}
	second, err := replies.NextMsg(testTimeout)
	if err != nil {
		t.Fatalf("one reply only (%s %s): %v", first.Subject, first.Data, err)
	}
	if first.Subject != "handover.waiter" || second.Subject != "handover.unlocker" {
		t.Fatalf("replies came to %s then %s; want the waiter's grant first", first.Subject, second.Subject)
	}
	var grant subjects.LockResponse
	if err := json.Unmarshal(first.Data, &grant); err != nil || !grant.Locked || grant.Key != "waiter-key" {
		t.Errorf("waiter's reply %s (%v), want a grant with its key", first.Data, err)
	}
	var unlocked subjects.UnlockResponse
	if err := json.Unmarshal(second.Data, &unlocked); err != nil || !unlocked.Unlocked {
		t.Errorf("unlocker's reply %s (%v), want unlocked", second.Data, err)
	}
}
