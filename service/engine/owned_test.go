package engine

import (
	"slices"
	"testing"

	"github.com/ldlm-io/ldlm/subjects"
)

func TestOwnerEntries(t *testing.T) {
	e, _ := newTestEngine(t)
	sess := subjects.Owner{Session: "0123456789abcdef0123456789abcdef"}
	other := subjects.Owner{ServerID: "S", ClientID: 1}
	a := mustTryLock(t, e, Request{Name: "a", Key: "ka", Owner: sess})
	mustTryLock(t, e, Request{Name: "b", Key: "kb", Owner: other})
	mustPark(t, e, Request{Name: "b", Key: "kw", Owner: sess}, 0)
	c := mustTryLock(t, e, Request{Name: "c", Key: "kc", Owner: sess})

	held, waiting := e.OwnerEntries(sess)
	wantHeld := []OwnedEntry{{Name: "a", Key: "ka", Token: a.Token}, {Name: "c", Key: "kc", Token: c.Token}}
	if !slices.Equal(held, wantHeld) {
		t.Errorf("held = %+v, want %+v", held, wantHeld)
	}
	if want := []OwnedEntry{{Name: "b", Key: "kw"}}; !slices.Equal(waiting, want) {
		t.Errorf("waiting = %+v, want %+v", waiting, want)
	}
	if held, waiting := e.OwnerEntries(subjects.Owner{Session: "unknown-session-id"}); held != nil || waiting != nil {
		t.Errorf("an unknown owner has %+v, %+v; want nothing", held, waiting)
	}
	e.ReleaseOwner(sess)
	if held, waiting := e.OwnerEntries(sess); held != nil || waiting != nil {
		t.Errorf("a released owner has %+v, %+v; want nothing", held, waiting)
	}
}
