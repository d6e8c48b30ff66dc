package engine

import (
	"testing"
	"time"
)

func TestFakeClock(t *testing.T) {
	start := time.Date(2030, 5, 1, 12, 0, 0, 0, time.UTC)
	c := NewFakeClock(start)
	var fired []string
	at := func(name string) func() {
		return func() { fired = append(fired, name+"@"+c.Now().Sub(start).String()) }
	}
	c.AfterFunc(3*time.Second, at("c"))
	c.AfterFunc(time.Second, at("a1"))
	stopped := c.AfterFunc(2*time.Second, at("stopped"))
	c.AfterFunc(time.Second, at("a2")) // same due time: creation order
	c.AfterFunc(time.Second, func() {
		// A timer started by a timer runs in the same Advance if due.
		c.AfterFunc(time.Second, at("chained"))
		c.AfterFunc(time.Hour, at("late"))
	})
	if !stopped.Stop() || stopped.Stop() {
		t.Fatal("Stop must report true once, then false")
	}
	if c.Pending() != 4 {
		t.Fatalf("Pending = %d, want 4", c.Pending())
	}
	c.Advance(3 * time.Second)
	want := []string{"a1@1s", "a2@1s", "chained@2s", "c@3s"}
	if len(fired) != len(want) {
		t.Fatalf("fired %v, want %v", fired, want)
	}
	for i := range want {
		if fired[i] != want[i] {
			t.Fatalf("fired %v, want %v", fired, want)
		}
	}
	if got := c.Now(); !got.Equal(start.Add(3 * time.Second)) {
		t.Fatalf("Now = %v", got)
	}
	if c.Pending() != 1 {
		t.Fatalf("Pending = %d, want only the late timer", c.Pending())
	}
	tm := c.AfterFunc(0, at("now"))
	c.Advance(0)
	if fired[len(fired)-1] != "now@3s" || tm.Stop() {
		t.Fatalf("a zero-delay timer must fire on Advance(0): %v", fired)
	}
	if NewFakeClock(time.Time{}).Now().Year() != 2025 {
		t.Fatal("the default start is not 2025")
	}
}
