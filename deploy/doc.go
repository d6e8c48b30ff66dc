// Package deploy holds the deployment files of LDLM and their tests: the
// NATS server configurations (nats.conf for docker-compose.yml, tenants.conf
// for one lock namespace per account), the example client of the compose
// file (deploy/example), and the monitoring profile's files: the Grafana
// dashboard (grafana/dashboards/ldlm.json), Grafana's provisioning and
// prometheus.yml. The Dockerfile and docker-compose.yml live at the top of
// the repository.
//
// No container engine is needed to run the tests: they check the Dockerfile,
// .dockerignore and compose file statically, have the real nats-server
// validate every configuration here, and run nats.conf with the nats-server
// and ldlm binaries built from this module, set up as the compose file sets
// them up, to check that the permissions let applications lock but not
// administer and that its /metrics exports every metric the dashboard
// queries.
package deploy
