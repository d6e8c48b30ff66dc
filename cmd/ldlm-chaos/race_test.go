//go:build race

package main

// raceEnabled: the test binary runs with the race detector, so the ldlm
// binary under test is built with it too; a data race then makes the
// service exit with status 66, which the chaos run reports.
const raceEnabled = true
