// The parts of the Firebase JS SDK the console uses, bundled by esbuild into infra/hosting/vendor/firebase.js
// (python -m infra.console.build; ./dev runs it). The console imports that file as a plain ES module.
export { getApp, initializeApp } from "firebase/app";
export {
  connectAuthEmulator,
  createUserWithEmailAndPassword,
  getAuth,
  onAuthStateChanged,
  signInWithEmailAndPassword,
  signOut,
} from "firebase/auth";
export {
  collection,
  connectFirestoreEmulator,
  doc,
  getFirestore,
  limit,
  onSnapshot,
  orderBy,
  query,
  where,
} from "firebase/firestore";
