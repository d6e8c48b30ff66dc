package engine

import "github.com/ldlm-io/ldlm/subjects"

// OwnedEntry is one grant or wait of an owner, as OwnerEntries lists it.
type OwnedEntry struct {
	Name  string // the engine's name of the lock
	Key   string
	Token uint64 // the grant's fencing token; 0 for a wait
}

// OwnerEntries returns what owner holds and waits for, oldest request
// first. It costs what the owner has, not what the engine holds: a client
// that re-attaches its session after a reconnect asks for it.
func (e *Engine) OwnerEntries(owner subjects.Owner) (held, waiting []OwnedEntry) {
	e.mu.Lock()
	defer e.mu.Unlock()
	o := e.owners[owner]
	if o == nil {
		return nil, nil
	}
	for en := o.entries.head; en != nil; en = en.link[inOwner].next {
		if en.wait != nil {
			waiting = append(waiting, OwnedEntry{Name: en.lock.name, Key: en.key})
		} else {
			held = append(held, OwnedEntry{Name: en.lock.name, Key: en.key, Token: en.token})
		}
	}
	return held, waiting
}

// HasOwner reports whether owner holds or waits for anything.
func (e *Engine) HasOwner(owner subjects.Owner) bool {
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.owners[owner] != nil
}
